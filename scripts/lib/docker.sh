# shellcheck shell=bash
# A Docker engine and the local images a machine without a container registry needs to run
# docker-compose.yml: Debian's docker.io engine (started when none answers, stopped by
# docker_stop if this file started it), the Compose v2 and buildx plugins from Debian
# trixie's packages, a debootstrapped Debian base image, and the stand-ins of
# scripts/lib/standins built on it. Source after infra.sh.

TW_STANDIN_BASE=tidewatch-standin/debian:bookworm
TW_STANDINS=(kafka postgres prometheus alertmanager node-exporter postgres-exporter)
TW_DOCKER_PLUGINS=/usr/local/lib/docker/cli-plugins

# Compose v2 is not packaged for bookworm (its docker-compose is v1, which rejects `name:`);
# trixie's docker-compose and docker-buildx are static binaries. They are downloaded through
# a temporary sources list, so the system's own lists are not touched.
install_compose_plugins() {
  local dir
  dir=$(mktemp -d)
  mkdir -p "$dir/lists/partial"
  echo "deb [trusted=yes] $(debian_mirror) trixie main" >"$dir/sources.list"
  local apt=(-o "Dir::Etc::SourceList=$dir/sources.list" -o Dir::Etc::SourceParts=/dev/null
             -o "Dir::State::Lists=$dir/lists" -o APT::Sandbox::User=root)
  log "installing the Compose v2 and buildx plugins from Debian trixie"
  as_root apt-get -qq "${apt[@]}" update
  (cd "$dir" && as_root apt-get -qq "${apt[@]}" download docker-compose docker-buildx)
  for deb in "$dir"/*.deb; do dpkg -x "$deb" "$dir/x"; done
  as_root mkdir -p "$TW_DOCKER_PLUGINS"
  as_root cp "$dir"/x/usr/libexec/docker/cli-plugins/docker-{compose,buildx} "$TW_DOCKER_PLUGINS/"
  rm -rf "$dir"
}

# Installs the engine and the plugins when missing and starts the engine when none answers.
ensure_docker() {
  command -v dockerd >/dev/null || ensure_apt docker.io
  ensure_apt debootstrap
  docker compose version >/dev/null 2>&1 || install_compose_plugins
  docker compose version >/dev/null 2>&1 || die "docker compose (v2) is not available"
  if ! docker info >/dev/null 2>&1; then
    log "starting a Docker engine"
    TW_DOCKERD_LOG=$(mktemp "${TMPDIR:-/tmp}/tidewatch-dockerd.XXXXXX")
    # Started directly (not through a function, whose subshell would be the pid), so
    # docker_stop's SIGTERM reaches dockerd itself (or sudo, which passes it on).
    if [ "$(id -u)" -eq 0 ]; then
      dockerd >"$TW_DOCKERD_LOG" 2>&1 &
    else
      sudo dockerd >"$TW_DOCKERD_LOG" 2>&1 &
    fi
    TW_DOCKERD_PID=$!
    wait_for "the Docker engine" 60 docker info
  fi
}

# Builds run inside the engine, not under the caller's `nice`: an engine this script did not
# start (left running, or the system's) gets the caller's niceness on every thread of
# dockerd and containerd until docker_restore_priority, so a background build stays
# background.
docker_match_priority() {
  local mine pid task was
  mine=$(nice)
  [ -z "${TW_DOCKERD_PID:-}" ] && [ "$mine" -gt 0 ] || return 0
  TW_RENICED=
  for pid in $(pgrep -x 'dockerd|containerd'); do
    for task in /proc/"$pid"/task/*; do
      task=${task##*/}
      was=$(awk '{print $19}' "/proc/$pid/task/$task/stat" 2>/dev/null)
      [ "${was:-0}" -lt "$mine" ] || continue
      as_root renice -n "$mine" -p "$task" >/dev/null 2>&1 && TW_RENICED+=" $task:$was"
    done
  done
  [ -z "$TW_RENICED" ] || log "the running Docker engine builds at this script's priority (nice $mine) until it ends"
}

docker_restore_priority() {
  local entry
  for entry in ${TW_RENICED:-}; do as_root renice -n "${entry#*:}" -p "${entry%%:*}" >/dev/null 2>&1 || true; done
  TW_RENICED=
}

# Stops the engine if ensure_docker started it.
docker_stop() {
  [ -n "${TW_DOCKERD_PID:-}" ] || return 0
  kill "$TW_DOCKERD_PID" 2>/dev/null
  for _ in $(seq 100); do kill -0 "$TW_DOCKERD_PID" 2>/dev/null || break; sleep 0.1; done
  rm -f "$TW_DOCKERD_LOG"
  TW_DOCKERD_PID=
}

image_exists() { docker image inspect "$1" >/dev/null 2>&1; }

# The Debian base every stand-in is built on: debootstrap (minbase) imported as an image.
build_standin_base() {
  image_exists "$TW_STANDIN_BASE" && return 0
  local root
  root=$(mktemp -d)
  log "debootstrapping the Debian base image $TW_STANDIN_BASE"
  as_root debootstrap --variant=minbase bookworm "$root" "$(debian_mirror)" >"$root.log" 2>&1 \
    || die "debootstrap failed: $(tail -5 "$root.log")"
  as_root tar -C "$root" -c . | docker import - "$TW_STANDIN_BASE" >/dev/null
  as_root rm -rf "$root" "$root.log"
}

# Builds the stand-ins (see scripts/lib/standins/Dockerfile) unless present: the base image,
# rust:<RUST_VERSION>-bookworm's stand-in from this machine's pinned toolchain, and the
# third-party services'. Sets TW_RUST_IMAGE to the builder image's name.
build_standins() {
  local rust_version context target
  rust_version=$(sed -n 's/^ARG RUST_VERSION=//p' "$TW_ROOT/Dockerfile")
  TW_RUST_IMAGE="tidewatch-standin/rust:$rust_version"
  build_standin_base
  context=$(mktemp -d)
  cp "$TW_ROOT"/scripts/lib/standins/* "$context/"
  if ! image_exists "$TW_RUST_IMAGE"; then
    (cd / && rustc --version) | grep -q "^rustc $rust_version " \
      || die "the machine's rustc is not the Dockerfile's RUST_VERSION $rust_version"
    log "building $TW_RUST_IMAGE from this machine's toolchain"
    mkdir "$context/toolchain"
    local sysroot
    sysroot=$(cd / && rustc --print sysroot)
    # Everything but the documentation (about 800 MB of HTML).
    tar -C "$sysroot" --exclude=./share/doc -c . | tar -C "$context/toolchain" -x
    cp /etc/ssl/certs/ca-certificates.crt "$context/"
    docker build -q --target rust -t "$TW_RUST_IMAGE" "$context" >/dev/null \
      || die "could not build $TW_RUST_IMAGE"
    rm -rf "$context/toolchain"
  fi
  if ! image_exists tidewatch-standin/kafka:tansu-$TANSU_VERSION; then
    cp "$(command -v tansu)" "$context/tansu"
  fi
  for target in "${TW_STANDINS[@]}"; do
    local tag="tidewatch-standin/$target:bookworm"
    [ "$target" = kafka ] && tag=tidewatch-standin/kafka:tansu-$TANSU_VERSION
    image_exists "$tag" && continue
    log "building the $target stand-in ($tag)"
    docker build -q --target "$target" -t "$tag" "$context" >/dev/null || die "could not build $tag"
  done
  rm -rf "$context"
}
