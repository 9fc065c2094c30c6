//! The consumer's side of the model registry: the line-up (champion, challenger, previous
//! champion) read every poll and handed to the stage through a watch channel, so a new
//! champion serves without a restart (staleness at most one poll), and the arena's
//! decisions carried out on the registry (each an audit row naming this service and why).

use std::time::Duration;

use anyhow::Context as _;
use tidewatch_db::registry::{Alias, Documents, NewVersion, Registry};
use tidewatch_model::profile::ReferenceProfile;
use tidewatch_model::{Model, ModelArtifact};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::arena::{Decision, Loaded};

/// Who moves aliases from here, in the audit table.
const ACTOR: &str = "prediction-consumer";

/// The versions in play, loaded.
#[derive(Debug, Clone)]
pub struct Lineup {
    pub champion: Loaded,
    pub challenger: Option<Loaded>,
    pub previous: Option<Loaded>,
}

impl Lineup {
    /// Exports the versions (`tidewatch_model_registry_alias_version{alias=role}`): what the
    /// next prediction uses (the stage takes a new line-up before its next message).
    pub fn export(&self) {
        let (champion, challenger, previous) = self.numbers();
        for (role, v) in crate::arena::ROLES
            .into_iter()
            .zip([Some(champion), challenger, previous])
        {
            tidewatch_telemetry::catalog::REGISTRY_ALIAS_VERSION
                .gauge(&[("alias", role)])
                .set(f64::from(v.unwrap_or(0)));
        }
    }

    fn numbers(&self) -> (i32, Option<i32>, Option<i32>) {
        (
            self.champion.0,
            self.challenger.as_ref().map(|c| c.0),
            self.previous.as_ref().map(|c| c.0),
        )
    }
}

/// Seeds an empty registry with the committed model (the files the consumer was started
/// with), as the trainer does; the first caller wins.
pub async fn seed(
    registry: &Registry,
    model_path: &std::path::Path,
    profile_path: &std::path::Path,
) -> anyhow::Result<bool> {
    let artifact_text = std::fs::read_to_string(model_path)
        .with_context(|| format!("cannot read model {}", model_path.display()))?;
    let artifact = ModelArtifact::from_json(&artifact_text)
        .map_err(|e| anyhow::anyhow!("model {} is invalid: {e}", model_path.display()))?;
    let reference_profile = std::fs::read_to_string(profile_path)
        .with_context(|| format!("cannot read reference profile {}", profile_path.display()))?;
    registry
        .seed(
            &NewVersion {
                name: &artifact.name,
                training_command: &artifact.training.command,
                data_window: None,
                created_by: "seed",
            },
            &Documents {
                heldout: serde_json::to_string(&artifact.heldout)?,
                artifact: artifact_text,
                reference_profile,
            },
            &format!("the committed {}", model_path.display()),
        )
        .await
}

async fn load(registry: &Registry, version: i32) -> anyhow::Result<(Model, ReferenceProfile)> {
    let v = registry
        .version(version)
        .await?
        .with_context(|| format!("registry version {version} is missing"))?;
    let artifact = ModelArtifact::from_json(&v.artifact)
        .map_err(|e| anyhow::anyhow!("registry version {version}'s artifact is invalid: {e}"))?;
    let profile = ReferenceProfile::from_json(&v.reference_profile)
        .map_err(|e| anyhow::anyhow!("registry version {version}'s profile is invalid: {e}"))?;
    Ok((Model::new(artifact), profile))
}

/// Reads the line-up; `known` is reused for versions already loaded.
pub async fn read(registry: &Registry, known: Option<&Lineup>) -> anyhow::Result<Lineup> {
    let champion = registry
        .alias(Alias::Champion)
        .await?
        .context("the registry has no champion")?
        .version;
    let challenger = registry.alias(Alias::Challenger).await?.map(|v| v.version);
    let previous = registry.previous_champion().await?;
    let cached = |v: i32| -> Option<Loaded> {
        let k = known?;
        [
            Some(&k.champion),
            k.challenger.as_ref(),
            k.previous.as_ref(),
        ]
        .into_iter()
        .flatten()
        .find(|l| l.0 == v)
        .cloned()
    };
    let get = |v: i32| {
        let cached = cached(v);
        async move {
            match cached {
                Some(l) => anyhow::Ok(l),
                None => {
                    let (m, p) = load(registry, v).await?;
                    Ok((v, m, p))
                }
            }
        }
    };
    let champion = get(champion).await?;
    let challenger = match challenger {
        Some(v) => Some(get(v).await?),
        None => None,
    };
    let previous = match previous {
        Some(v) => Some(get(v).await?),
        None => None,
    };
    Ok(Lineup {
        champion,
        challenger,
        previous,
    })
}

/// Polls the registry every `poll` (and at once after carrying out a decision), sending
/// each changed line-up, until `stop`.
pub async fn run(
    registry: Registry,
    poll: Duration,
    tx: watch::Sender<Lineup>,
    mut decisions: mpsc::UnboundedReceiver<Decision>,
    stop: CancellationToken,
) {
    tx.borrow().export();
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(poll) => {}
            Some(d) = decisions.recv() => apply(&registry, d).await,
        }
        let current = tx.borrow().clone();
        match read(&registry, Some(&current)).await {
            Ok(next) if next.numbers() != current.numbers() => {
                tracing::info!(
                    champion = next.champion.0,
                    challenger = next.challenger.as_ref().map(|c| c.0),
                    previous = next.previous.as_ref().map(|c| c.0),
                    "model line-up changed in the registry"
                );
                next.export();
                let _ = tx.send(next);
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "cannot read the model registry"),
        }
    }
}

async fn apply(registry: &Registry, decision: Decision) {
    let result = match &decision {
        Decision::Promote { reason, .. } => {
            registry.promote_challenger(ACTOR, reason).await.map(drop)
        }
        Decision::Reject { reason, .. } => registry
            .move_alias(Alias::Challenger, None, ACTOR, reason)
            .await
            .map(drop),
        Decision::RollBack { to, reason } => registry.roll_back(*to, ACTOR, reason).await.map(drop),
    };
    match (result, &decision) {
        (Err(e), _) => {
            tracing::error!(error = %format!("{e:#}"), decision = decision.label(), "cannot record the decision in the registry")
        }
        (Ok(()), Decision::Promote { version, reason }) => {
            tracing::info!(version, reason, "challenger promoted to champion")
        }
        (Ok(()), Decision::Reject { version, reason }) => {
            tracing::info!(version, reason, "challenger rejected")
        }
        (Ok(()), Decision::RollBack { to, reason }) => {
            tracing::warn!(to, reason, "champion rolled back")
        }
    }
}
