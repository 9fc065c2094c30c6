//! The Kubernetes base under `deploy/kubernetes/base`, generated from `docker-compose.yml`
//! and the Prometheus rule files, so a cluster runs the very images, commands, ports,
//! environment and probes that compose runs, and Prometheus there evaluates the very rules.
//!
//! What compose cannot say, this module does, per service ([`Role`]): which services are
//! Kafka consumer-group stages (StatefulSets, so each instance keeps a stable name for
//! static group membership, scaled by KEDA on consumer lag up to the partition count),
//! which must run exactly once (the market source, the trainer), and which scale freely
//! (the prediction API). Kafka and PostgreSQL are not in the base: compose runs them, a
//! cluster has its own (overlays point `KAFKA_BROKERS` and `DATABASE_URL` at them).
//!
//! Keys come out sorted, as `kubectl get -o yaml` prints them; rule groups keep their order.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use serde_json::{json, Map, Value};

/// Where the generated base goes, relative to the workspace root.
pub const BASE: &str = "deploy/kubernetes/base";
/// Where the demo overlay's generated load driver goes.
pub const DEMO: &str = "deploy/kubernetes/overlays/demo";
/// The ConfigMap and Secret every Tidewatch pod reads its shared settings from.
pub const CONFIG: &str = "tidewatch";
/// The probe and scrape paths every service serves (`tidewatch_telemetry::server`).
pub const LIVE: &str = "/health/live";
pub const READY: &str = "/health/ready";
pub const METRICS: &str = "/metrics";
/// Where KEDA asks for consumer lag: the Prometheus Operator's governing Service.
pub const PROMETHEUS: &str = "http://prometheus-operated.monitoring.svc:9090";
/// Unconsumed messages per instance above which KEDA adds an instance: ten seconds of the
/// demo's 200 records a second, a fifth of what ConsumerLagHigh calls a problem.
pub const LAG_PER_INSTANCE: u32 = 2000;

/// How a service runs on a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A consumer-group stage: a StatefulSet (a stable pod name is its static
    /// `KAFKA_GROUP_INSTANCE_ID`), scaled on lag, at most one instance per partition.
    Stage,
    /// Exactly one instance, replaced (not overlapped) on update: a second market source
    /// would publish the market twice, a second trainer would train twice.
    Single,
    /// Stateless HTTP: several replicas, rolled without losing capacity.
    Replicated,
    /// Demo only (the load driver): in the demo overlay, not in the base.
    Demo,
}

/// Every Tidewatch service of compose and its role; a compose service missing here fails
/// generation, so a new service cannot reach compose without a decision for clusters.
pub const ROLES: &[(&str, Role)] = &[
    ("alert-receiver", Role::Single),
    ("prediction-api", Role::Replicated),
    ("loadgen", Role::Demo),
    ("generator", Role::Single),
    ("normalize", Role::Stage),
    ("enrich", Role::Stage),
    ("aggregate", Role::Stage),
    ("prediction-consumer", Role::Stage),
    ("project", Role::Stage),
    ("trainer", Role::Single),
];

/// Every generated file: its path under the workspace root and its text.
pub fn manifests(root: &Path) -> anyhow::Result<Vec<(PathBuf, String)>> {
    let compose = read_yaml(&root.join("docker-compose.yml"))?;
    let compose: Value = serde_json::to_value(compose).context("docker-compose.yml as JSON")?;
    let services = compose["services"]
        .as_object()
        .context("docker-compose.yml has no services")?;
    let partitions = services["kafka"]["environment"]["KAFKA_NUM_PARTITIONS"]
        .as_u64()
        .context("kafka's KAFKA_NUM_PARTITIONS in docker-compose.yml")?;
    let scrape = scrape_interval(root)?;
    let shared = compose["x-tidewatch"]["environment"]
        .as_object()
        .context("x-tidewatch.environment in docker-compose.yml")?;

    let mut out = Vec::new();
    let mut resources = vec!["config.yaml".to_owned()];
    out.push((
        Path::new(BASE).join("config.yaml"),
        documents(&[config_map(shared, partitions)?])?,
    ));
    for (name, service) in services {
        if !service["image"]
            .as_str()
            .is_some_and(|i| i.starts_with("tidewatch:"))
        {
            continue;
        }
        let role = ROLES
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, r)| *r)
            .with_context(|| {
                format!("compose service {name} has no Kubernetes role in kubernetes::ROLES")
            })?;
        let docs = service_documents(name, shared, service, role, partitions, &scrape)?;
        let file = format!("{name}.yaml");
        if role == Role::Demo {
            out.push((Path::new(DEMO).join(&file), documents(&docs)?));
        } else {
            out.push((Path::new(BASE).join(&file), documents(&docs)?));
            resources.push(file);
        }
    }
    for (name, _) in ROLES {
        anyhow::ensure!(
            services.contains_key(*name),
            "kubernetes::ROLES names {name}, which docker-compose.yml does not run"
        );
    }
    out.push((Path::new(BASE).join("rules.yaml"), rules(root)?));
    resources.push("rules.yaml".to_owned());
    let kustomization = json!({
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "labels": [{"pairs": {"app.kubernetes.io/part-of": "tidewatch"}, "includeSelectors": false}],
        "resources": resources,
    });
    out.push((
        Path::new(BASE).join("kustomization.yaml"),
        documents(&[kustomization])?,
    ));
    Ok(out)
}

fn read_yaml(path: &Path) -> anyhow::Result<serde_yaml_ng::Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut value: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    value.apply_merge().context("YAML merge keys")?;
    Ok(value)
}

fn scrape_interval(root: &Path) -> anyhow::Result<String> {
    let prometheus = read_yaml(&root.join("monitoring/prometheus/prometheus.yml"))?;
    prometheus["global"]["scrape_interval"]
        .as_str()
        .map(str::to_owned)
        .context("global.scrape_interval in prometheus.yml")
}

/// The settings every Tidewatch service shares (compose's `x-tidewatch` environment), less
/// the secrets: those come from the Secret `tidewatch`, which the cluster's owner creates.
fn config_map(shared: &Map<String, Value>, partitions: u64) -> anyhow::Result<Value> {
    let mut data = Map::new();
    for (key, value) in shared {
        if !is_secret(value) {
            data.insert(key.clone(), Value::String(scalar(value)?));
        }
    }
    // Compose leaves it at the services' default; here KEDA's cap reads the same number.
    data.insert(
        "KAFKA_TOPIC_PARTITIONS".into(),
        Value::String(partitions.to_string()),
    );
    Ok(json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": CONFIG},
        "data": data,
    }))
}

/// A compose value taken from the user's `.env` (`${POSTGRES_PASSWORD:-...}`): a secret.
fn is_secret(value: &Value) -> bool {
    value.as_str().is_some_and(|v| v.contains("${"))
}

fn scalar(value: &Value) -> anyhow::Result<String> {
    Ok(match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => bail!("environment value {other} is not a scalar"),
    })
}

/// Seconds of a compose duration such as `10s` or `1m`.
fn seconds(duration: &Value, default: u64) -> anyhow::Result<u64> {
    let Some(text) = duration.as_str() else {
        return Ok(default);
    };
    let (number, unit) = split_unit(text);
    let n: u64 = number
        .parse()
        .with_context(|| format!("duration {text:?}"))?;
    Ok(match unit {
        "s" => n,
        "m" => n * 60,
        _ => bail!("duration {text:?}: only s and m are expected"),
    })
}

/// A compose quantity's number and its one-letter unit (`10s`, `256m`).
fn split_unit(text: &str) -> (&str, &str) {
    text.split_at(text.char_indices().last().map_or(0, |(i, _)| i))
}

/// Kubernetes memory from compose's `mem_limit` (`256m` is 256 MiB to Docker).
fn memory(limit: &Value) -> anyhow::Result<String> {
    let text = limit.as_str().context("mem_limit")?;
    let (number, unit) = split_unit(text);
    Ok(match unit {
        "m" => format!("{number}Mi"),
        "g" => format!("{number}Gi"),
        _ => bail!("mem_limit {text:?}: only m and g are expected"),
    })
}

fn service_documents(
    name: &str,
    shared: &Map<String, Value>,
    service: &Value,
    role: Role,
    partitions: u64,
    scrape: &str,
) -> anyhow::Result<Vec<Value>> {
    let labels = json!({"app.kubernetes.io/name": name});
    let env = service["environment"]
        .as_object()
        .with_context(|| format!("{name}'s environment"))?;
    let listen = env
        .get("LISTEN_ADDR")
        .and_then(Value::as_str)
        .with_context(|| format!("{name}'s LISTEN_ADDR"))?;
    let port: u16 = listen
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .with_context(|| format!("{name}'s LISTEN_ADDR {listen:?}"))?;

    // The shared settings come from the ConfigMap and the Secret; the rest is the
    // service's own, as compose writes it, but the static group member id: the pod's name.
    let mut own = Vec::new();
    for (key, value) in env {
        if is_secret(value) || shared.contains_key(key) {
            continue;
        }
        if key == "KAFKA_GROUP_INSTANCE_ID" {
            own.push(
                json!({"name": key, "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}),
            );
        } else {
            own.push(json!({"name": key, "value": scalar(value)?}));
        }
    }

    let health = &service["healthcheck"];
    let period = seconds(&health["interval"], 10)?;
    let timeout = seconds(&health["timeout"], 5)?;
    let start = seconds(&health["start_period"], 10)?;
    let probe = |path: &str| json!({"httpGet": {"path": path, "port": "http"}, "periodSeconds": period, "timeoutSeconds": timeout, "failureThreshold": 3});
    // Up to the compose start period plus a minute to start (a stage's first rebalance).
    let startup = json!({"httpGet": {"path": LIVE, "port": "http"}, "periodSeconds": 2, "failureThreshold": (start + 60) / 2});

    let mut volume_mounts = Vec::new();
    let mut volumes = Vec::new();
    for (i, v) in service["volumes"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        // Compose keeps the generator's state in a named volume; its market resumes from
        // the topic, so a pod's own directory is enough (and the root stays read-only).
        let target = v
            .as_str()
            .and_then(|v| v.split(':').nth(1))
            .with_context(|| format!("{name}'s volume {v}"))?;
        let volume = format!("state-{i}");
        volume_mounts.push(json!({"name": volume, "mountPath": target}));
        volumes.push(json!({"name": volume, "emptyDir": {}}));
    }

    let mut container = json!({
        "name": name,
        "image": service["image"],
        "command": service["entrypoint"],
        "envFrom": [
            {"configMapRef": {"name": CONFIG}},
            {"secretRef": {"name": CONFIG}},
        ],
        "env": own,
        "ports": [{"name": "http", "containerPort": port, "protocol": "TCP"}],
        "startupProbe": startup,
        "livenessProbe": probe(LIVE),
        "readinessProbe": probe(READY),
        "resources": {
            "requests": {"cpu": "100m", "memory": "128Mi"},
            // No CPU limit: throttling a stage only grows its lag; memory is bounded as
            // in compose.
            "limits": {"memory": memory(&service["mem_limit"])?},
        },
        "securityContext": {
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "capabilities": {"drop": ["ALL"]},
        },
    });
    if !volume_mounts.is_empty() {
        container["volumeMounts"] = Value::Array(volume_mounts);
    }
    let user = service["user"]
        .as_str()
        .and_then(|u| u.split(':').next())
        .and_then(|u| u.parse::<u32>().ok())
        .with_context(|| format!("{name}'s user"))?;
    let mut pod_spec = json!({
        "automountServiceAccountToken": false,
        // A stage finishes or hands back its in-flight records and commits on SIGTERM.
        "terminationGracePeriodSeconds": 30,
        "securityContext": {
            "runAsNonRoot": true,
            "runAsUser": user,
            "runAsGroup": user,
            "fsGroup": user,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
    });
    if !volumes.is_empty() {
        pod_spec["volumes"] = Value::Array(volumes);
    }
    if matches!(role, Role::Stage | Role::Replicated) {
        pod_spec["topologySpreadConstraints"] = json!([{
            "maxSkew": 1,
            "topologyKey": "kubernetes.io/hostname",
            "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchLabels": labels},
        }]);
    }
    let template = json!({"metadata": {"labels": labels}, "spec": pod_spec});

    let workload = match role {
        Role::Stage => json!({
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "metadata": {"name": name, "labels": labels},
            "spec": {
                "serviceName": name,
                // Instances are peers in a consumer group: start and stop them together.
                "podManagementPolicy": "Parallel",
                "replicas": 1,
                "selector": {"matchLabels": labels},
                "template": template,
            },
        }),
        Role::Single | Role::Demo => json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name, "labels": labels},
            "spec": {
                "replicas": 1,
                "strategy": {"type": "Recreate"},
                "selector": {"matchLabels": labels},
                "template": template,
            },
        }),
        Role::Replicated => json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name, "labels": labels},
            "spec": {
                "replicas": 2,
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
                "selector": {"matchLabels": labels},
                "template": template,
            },
        }),
    };
    let mut docs = vec![
        workload,
        json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "labels": labels},
            "spec": {
                "selector": labels,
                "ports": [{"name": "http", "port": port, "targetPort": "http", "protocol": "TCP"}],
            },
        }),
        json!({
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": {"name": name, "labels": labels},
            // One at a time: a drain never takes a whole stage (or the one generator) away
            // for longer than its restart, and never blocks on a single replica.
            "spec": {"maxUnavailable": 1, "selector": {"matchLabels": labels}},
        }),
        json!({
            "apiVersion": "monitoring.coreos.com/v1",
            "kind": "ServiceMonitor",
            "metadata": {"name": name, "labels": labels},
            // The operator labels each target with its Service's name as `service`, the
            // label every rule and dashboard selects on (compose's target files set it).
            "spec": {
                "selector": {"matchLabels": labels},
                "endpoints": [{"port": "http", "path": METRICS, "interval": scrape}],
            },
        }),
    ];
    if role == Role::Stage {
        docs.push(json!({
            "apiVersion": "keda.sh/v1alpha1",
            "kind": "ScaledObject",
            "metadata": {"name": name, "labels": labels},
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": name},
                "minReplicaCount": 1,
                // An instance beyond the partition count would sit idle in the group.
                "maxReplicaCount": partitions,
                "pollingInterval": 30,
                "cooldownPeriod": 300,
                "triggers": [{
                    "type": "prometheus",
                    "metadata": {
                        "serverAddress": PROMETHEUS,
                        // Position lag, not committed lag: aggregate commits the start of its
                        // oldest open window, so its committed lag never shrinks.
                        "query": format!("sum(tidewatch_kafka_consumer_lag_messages{{service=\"{name}\"}})"),
                        "threshold": LAG_PER_INSTANCE.to_string(),
                    },
                }],
            },
        }));
    }
    Ok(docs)
}

/// One PrometheusRule per rule file, carrying its groups as they are.
fn rules(root: &Path) -> anyhow::Result<String> {
    let dir = root.join("monitoring/prometheus/rules");
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "yml") {
            let stem = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".yml"))
                .context("a rule file's name")?
                .replace('.', "-");
            files.insert(stem, read_yaml(&path)?);
        }
    }
    let mut text = String::new();
    for (stem, groups) in files {
        let mut doc = serde_yaml_ng::to_value(json!({
            "apiVersion": "monitoring.coreos.com/v1",
            "kind": "PrometheusRule",
            "metadata": {"name": format!("tidewatch-{stem}")},
        }))?;
        doc["spec"] = groups;
        text.push_str("---\n");
        text.push_str(&serde_yaml_ng::to_string(&doc)?);
    }
    Ok(format!("{HEADER}{text}"))
}

const HEADER: &str =
    "# Generated by `cargo run -p tidewatch-monitoring -- generate` from docker-compose.yml\n\
# and monitoring/prometheus; do not edit (scripts/check-kubernetes checks it).\n";

fn documents(docs: &[Value]) -> anyhow::Result<String> {
    let mut text = HEADER.to_owned();
    for doc in docs {
        text.push_str("---\n");
        text.push_str(&serde_yaml_ng::to_string(doc)?);
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compose_quantities_convert_and_malformed_ones_are_errors() {
        assert_eq!(seconds(&json!("1m"), 0).unwrap(), 60);
        assert_eq!(seconds(&Value::Null, 7).unwrap(), 7);
        assert_eq!(memory(&json!("256m")).unwrap(), "256Mi");
        for bad in ["", "s", "10", "10µ", "x5s"] {
            assert!(seconds(&json!(bad), 0).is_err(), "{bad:?} as a duration");
            assert!(memory(&json!(bad)).is_err(), "{bad:?} as a memory limit");
        }
    }
}
