#!/usr/bin/env bash
# Deploy longrun to Google Cloud: Firestore + Pub/Sub + Cloud Run.
# Walk-through, roles and teardown: docs/deploy.md. Run with --help for the options.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: deploy/cloudrun.sh [options]

Deploys longrun to a Google Cloud project with gcloud: APIs, service accounts with
least privilege, the Firestore database with its composite indexes and TTL policy,
the Pub/Sub topics and subscriptions, the page-token secret and the task-message
signing keys (Secret Manager), the gRPC server as a
Cloud Run service (end-to-end HTTP/2), and the workers. Every command is printed
("+ command") before it runs; resources that exist are kept (describe-or-create).
Build and push the image first (docs/deploy.md).

Options (each also settable by the environment variable in brackets):
  --project ID          Google Cloud project (required)                    [PROJECT]
  --region REGION       Cloud Run region (default us-central1)             [REGION]
  --image IMAGE         container image (required), e.g.                   [IMAGE]
                        us-central1-docker.pkg.dev/ID/longrun/longrun:TAG
  --pull-workers        workers pull from the subscription, in a Cloud Run worker
                        pool (default)                                     [WORKERS=pull]
  --push-workers        Pub/Sub pushes each task to a private Cloud Run worker
                        service (scales to zero; tasks up to 600 s)        [WORKERS=push]
  --invoker MEMBER      may call the server (roles/run.invoker on the server service),
                        e.g. user:you@example.com; repeatable        [SERVER_INVOKERS, space-separated]
  --strict-iam          skip the extra Pub/Sub grants that the current server and pull
                        worker need because they create missing Pub/Sub resources at
                        start (see "Startup grants" in docs/deploy.md)     [STRICT_IAM=1]
  --enable-cloudbuild   also enable cloudbuild.googleapis.com (gcloud builds submit)
                                                                           [ENABLE_CLOUDBUILD=1]
  --dry-run             print every command, run none (gcloud is never called) [DRY_RUN=1]
  -h, --help            this help

Names and sizes (environment only; defaults in parentheses):
  SERVER_SERVICE (longrun-server)   WORKER_SERVICE (longrun-worker)   WORKER_POOL (longrun-workers)
  SERVER_SA_NAME (longrun-server)   WORKER_SA_NAME (longrun-worker)   PUSH_SA_NAME (longrun-push)
  TOPIC (longrun-tasks)             DEAD_LETTER_TOPIC (longrun-dead-letters)
  SUBSCRIPTION (longrun-workers)    PUSH_SUBSCRIPTION (longrun-push)
  SECRET_NAME (longrun-page-token-secret)  SIGNING_SECRET_NAME (longrun-message-signing-keys)
  FIRESTORE_DATABASE ((default))    FIRESTORE_LOCATION (REGION)       COLLECTION (operations)
  MAX_DELIVERY_ATTEMPTS (10)        PULL_ACK_DEADLINE (60)            PUSH_ACK_DEADLINE (600)
  MIN_RETRY_DELAY (10s)             MAX_RETRY_DELAY (600s)
  SERVER_MIN_INSTANCES (1)          SERVER_TIMEOUT (3600)             WORKER_INSTANCES (2)
  WORKER_CONCURRENCY (4)            SHUTDOWN_GRACE (8)
  PROJECT_NUMBER (looked up with gcloud projects describe)
  INDEXES_FILE (firestore.indexes.json at the repository root)

Needs bash, python3 (to read the index file) and, unless --dry-run, gcloud with the
beta component, logged in as someone who may create these resources (Owner, or the
roles listed in docs/deploy.md).
EOF
}

die() {
  printf 'cloudrun.sh: %s\n' "$*" >&2
  exit 2
}

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# ---- configuration: environment first, flags override ----
PROJECT=${PROJECT:-}
REGION=${REGION:-us-central1}
IMAGE=${IMAGE:-}
WORKERS=${WORKERS:-pull}
DRY_RUN=${DRY_RUN:-0}
STRICT_IAM=${STRICT_IAM:-0}
ENABLE_CLOUDBUILD=${ENABLE_CLOUDBUILD:-0}
read -r -a invokers <<<"${SERVER_INVOKERS:-}"
mode_flags=()

while (($#)); do
  case $1 in
    --project) PROJECT=${2:?--project needs a value}; shift ;;
    --project=*) PROJECT=${1#*=} ;;
    --region) REGION=${2:?--region needs a value}; shift ;;
    --region=*) REGION=${1#*=} ;;
    --image) IMAGE=${2:?--image needs a value}; shift ;;
    --image=*) IMAGE=${1#*=} ;;
    --invoker) invokers+=("${2:?--invoker needs a value}"); shift ;;
    --invoker=*) invokers+=("${1#*=}") ;;
    --pull-workers) WORKERS=pull; mode_flags+=("$1") ;;
    --push-workers) WORKERS=push; mode_flags+=("$1") ;;
    --strict-iam) STRICT_IAM=1 ;;
    --enable-cloudbuild) ENABLE_CLOUDBUILD=1 ;;
    --dry-run) DRY_RUN=1 ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
  shift
done

SERVER_SERVICE=${SERVER_SERVICE:-longrun-server}
WORKER_SERVICE=${WORKER_SERVICE:-longrun-worker}
WORKER_POOL=${WORKER_POOL:-longrun-workers}
SERVER_SA_NAME=${SERVER_SA_NAME:-longrun-server}
WORKER_SA_NAME=${WORKER_SA_NAME:-longrun-worker}
PUSH_SA_NAME=${PUSH_SA_NAME:-longrun-push}
TOPIC=${TOPIC:-longrun-tasks}
DEAD_LETTER_TOPIC=${DEAD_LETTER_TOPIC:-longrun-dead-letters}
SUBSCRIPTION=${SUBSCRIPTION:-longrun-workers}
PUSH_SUBSCRIPTION=${PUSH_SUBSCRIPTION:-longrun-push}
# The queue's `dead_letters()` reads this one; without any subscription a topic drops its messages.
INSPECT_SUBSCRIPTION=${DEAD_LETTER_TOPIC}-inspect
SECRET_NAME=${SECRET_NAME:-longrun-page-token-secret}
SIGNING_SECRET_NAME=${SIGNING_SECRET_NAME:-longrun-message-signing-keys}
FIRESTORE_DATABASE=${FIRESTORE_DATABASE:-(default)}
FIRESTORE_LOCATION=${FIRESTORE_LOCATION:-$REGION}
COLLECTION=${COLLECTION:-operations}
MAX_DELIVERY_ATTEMPTS=${MAX_DELIVERY_ATTEMPTS:-10}
PULL_ACK_DEADLINE=${PULL_ACK_DEADLINE:-60}
PUSH_ACK_DEADLINE=${PUSH_ACK_DEADLINE:-600}
MIN_RETRY_DELAY=${MIN_RETRY_DELAY:-10s}
MAX_RETRY_DELAY=${MAX_RETRY_DELAY:-600s}
SERVER_MIN_INSTANCES=${SERVER_MIN_INSTANCES:-1}
SERVER_TIMEOUT=${SERVER_TIMEOUT:-3600}
WORKER_INSTANCES=${WORKER_INSTANCES:-2}
WORKER_CONCURRENCY=${WORKER_CONCURRENCY:-4}
SHUTDOWN_GRACE=${SHUTDOWN_GRACE:-8}
PROJECT_NUMBER=${PROJECT_NUMBER:-}
INDEXES_FILE=${INDEXES_FILE:-$here/../firestore.indexes.json}

# ---- validation ----
[[ -n $PROJECT ]] || die "PROJECT is required: set PROJECT=my-project or pass --project my-project"
[[ -n $IMAGE ]] || die "IMAGE is required: set IMAGE=REGION-docker.pkg.dev/PROJECT/longrun/longrun:TAG or pass --image"
((${#mode_flags[@]} <= 1)) || die "choose one of --pull-workers and --push-workers: each subscription gets its own copy of every task message, so pull and push workers on one topic would both receive every task"
[[ $WORKERS == pull || $WORKERS == push ]] || die "WORKERS must be pull or push, not '$WORKERS'"
[[ $DRY_RUN == 0 || $DRY_RUN == 1 ]] || die "DRY_RUN must be 0 or 1"
for member in ${invokers[@]+"${invokers[@]}"}; do
  case $member in
    allUsers | allAuthenticatedUsers) die "refusing --invoker $member: the server must not be public" ;;
    user:* | group:* | serviceAccount:* | domain:* | principal:* | principalSet:*) ;;
    *) die "--invoker needs a member like user:you@example.com, not '$member'" ;;
  esac
done
[[ -r $INDEXES_FILE ]] || die "cannot read the index file $INDEXES_FILE (INDEXES_FILE)"
command -v python3 >/dev/null || die "python3 is needed to read $INDEXES_FILE"
if ((!DRY_RUN)); then
  command -v gcloud >/dev/null || die "gcloud is not on PATH (https://cloud.google.com/sdk/docs/install)"
  export CLOUDSDK_CORE_DISABLE_PROMPTS=1
fi

SERVER_SA=$SERVER_SA_NAME@$PROJECT.iam.gserviceaccount.com
WORKER_SA=$WORKER_SA_NAME@$PROJECT.iam.gserviceaccount.com
PUSH_SA=$PUSH_SA_NAME@$PROJECT.iam.gserviceaccount.com
STARTUP_ROLE=longrunPubsubStartup
P=--project=$PROJECT
R=--region=$REGION
D=--database=$FIRESTORE_DATABASE

# ---- how commands are printed and run ----
# quote WORD...: the words as one shell-quoted line (single quotes where needed).
quote() {
  local out="" word q="'"
  for word in "$@"; do
    if [[ ! $word =~ ^[A-Za-z0-9_./:=@,%+-]+$ ]]; then
      word="$q${word//$q/$q\\$q$q}$q"
    fi
    out+="${out:+ }$word"
  done
  printf '%s' "$out"
}

note() { printf '# %s\n' "$*"; }

section() { printf '\n# ---- %s ----\n' "$*"; }

# run CMD...: print it, then run it (unless dry run).
run() {
  printf '+ %s\n' "$(quote "$@")"
  if ((!DRY_RUN)); then
    "$@"
  fi
}

# ensure CHECK... :: CREATE...: run CREATE only when CHECK (a describe) fails.
ensure() {
  local -a check=()
  while [[ $1 != "::" ]]; do
    check+=("$1")
    shift
  done
  shift
  if ((DRY_RUN)); then
    printf '+ %s >/dev/null 2>&1 || %s\n' "$(quote "${check[@]}")" "$(quote "$@")"
  elif "${check[@]}" >/dev/null 2>&1; then
    note "exists, kept: $(quote "${check[@]}")"
  else
    run "$@"
  fi
}

# create_once CMD...: run a create that fails with ALREADY_EXISTS on a re-run.
create_once() {
  printf '+ %s\n' "$(quote "$@")"
  if ((DRY_RUN)); then
    return 0
  fi
  local err
  if { err=$("$@" 2>&1 1>&3 3>&-); } 3>&1; then
    return 0
  fi
  if grep -Eqi 'already[ _]exists' <<<"$err"; then
    note "exists, kept"
    return 0
  fi
  printf '%s\n' "$err" >&2
  return 1
}

# bind CMD...: an add-iam-policy-binding, retried while a new service account
# is not yet visible to IAM (that takes a few seconds after its creation).
bind() {
  printf '+ %s\n' "$(quote "$@")"
  if ((DRY_RUN)); then
    return 0
  fi
  local attempt
  for attempt in 1 2 3 4 5 6; do
    if "$@" >/dev/null; then
      return 0
    fi
    ((attempt < 6)) || break
    note "retrying in $((attempt * 5))s"
    sleep $((attempt * 5))
  done
  return 1
}

# capture VAR PLACEHOLDER CMD...: VAR=$(CMD); in a dry run VAR=PLACEHOLDER.
capture() {
  local var=$1 placeholder=$2 value
  shift 2
  printf '+ %s\n' "$(quote "$@")"
  if ((DRY_RUN)); then
    value=$placeholder
    note "dry run: $var=$value"
  else
    value=$("$@")
    [[ -n $value ]] || die "no value from: $(quote "$@")"
  fi
  printf -v "$var" '%s' "$value"
}

# Startup grants. PubSubTaskQueue.start() (server and pull workers) creates the
# topics and subscriptions when missing and takes only ALREADY_EXISTS as "present";
# without create permission Pub/Sub answers PERMISSION_DENIED, and the process
# retries forever instead of serving. These grants let that check pass; skip them
# with --strict-iam once the queue no longer needs them (docs/deploy.md).
startup_grants() {
  local sa topic
  if ((STRICT_IAM)); then
    note "startup grants skipped (--strict-iam)"
    return 0
  fi
  note "startup grants for the queue's start-up check (skip with --strict-iam)"
  ensure gcloud iam roles describe "$STARTUP_ROLE" "$P" :: \
    gcloud iam roles create "$STARTUP_ROLE" "$P" --title="longrun queue start-up" \
    --description="Lets the Pub/Sub start-up check of longrun reach ALREADY_EXISTS" \
    --permissions=pubsub.topics.create,pubsub.subscriptions.create --stage=GA
  for sa in "$@"; do
    bind gcloud projects add-iam-policy-binding "$PROJECT" --member="serviceAccount:$sa" \
      --role="projects/$PROJECT/roles/$STARTUP_ROLE" --condition=None
    # pubsub.topics.attachSubscription, on the two longrun topics only.
    for topic in "$TOPIC" "$DEAD_LETTER_TOPIC"; do
      bind gcloud pubsub topics add-iam-policy-binding "$topic" \
        --member="serviceAccount:$sa" --role=roles/pubsub.subscriber "$P"
    done
  done
}

# startup_viewer SUBSCRIPTION SA...: pubsub.subscriptions.get, with which the
# start-up check compares an existing subscription's settings with its own.
startup_viewer() {
  local subscription=$1 sa
  shift
  if ((STRICT_IAM)); then
    return 0
  fi
  for sa in "$@"; do
    bind gcloud pubsub subscriptions add-iam-policy-binding "$subscription" \
      --member="serviceAccount:$sa" --role=roles/pubsub.viewer "$P"
  done
}

# The index file as lines of tab-separated fields (composite / field / ttl).
read_indexes() {
  python3 - "$INDEXES_FILE" "$COLLECTION" <<'PY'
import json
import sys

path, collection = sys.argv[1], sys.argv[2]
with open(path, encoding="utf-8") as f:
    spec = json.load(f)
scopes = {"COLLECTION": "collection", "COLLECTION_GROUP": "collection-group"}


def group(entry):
    name = entry["collectionGroup"]
    return collection if name == "operations" else name


def field_config(field):
    if "order" in field:
        return f"field-path={field['fieldPath']},order={field['order'].lower()}"
    if "arrayConfig" in field:
        return f"field-path={field['fieldPath']},array-config={field['arrayConfig'].lower()}"
    raise SystemExit(f"{path}: unsupported index field {field}")


for index in spec.get("indexes", []):
    scope = scopes[index.get("queryScope", "COLLECTION")]
    fields = [field_config(f) for f in index["fields"]]
    print("\t".join(["composite", group(index), scope, *fields]))
for override in spec.get("fieldOverrides", []):
    name = override["fieldPath"]
    if override.get("ttl"):
        print("\t".join(["ttl", group(override), name]))
    if "indexes" not in override:
        continue
    configs = []
    for index in override["indexes"]:
        if index.get("queryScope", "COLLECTION") != "COLLECTION":
            raise SystemExit(f"{path}: {name}: only COLLECTION-scoped field indexes are supported")
        if "order" in index:
            configs.append(f"order={index['order'].lower()}")
        else:
            configs.append(f"array-config={index['arrayConfig'].lower()}")
    print("\t".join(["field", group(override), name, *configs]))
PY
}

index_lines=$(read_indexes)

if ((DRY_RUN)); then
  note "dry run: nothing is run and gcloud is never called; printed as for a new project"
  note "(on a re-run the describe before each '||' finds what exists and it is kept)"
fi
note "project $PROJECT, region $REGION, image $IMAGE, $WORKERS workers"

# ---- 1. APIs ----
section "APIs"
apis=(run.googleapis.com firestore.googleapis.com pubsub.googleapis.com iam.googleapis.com
  artifactregistry.googleapis.com secretmanager.googleapis.com)
if ((ENABLE_CLOUDBUILD)); then
  apis+=(cloudbuild.googleapis.com)
fi
run gcloud services enable "${apis[@]}" "$P"
# The Pub/Sub service agent signs push tokens and forwards dead letters; make sure it exists.
run gcloud beta services identity create --service=pubsub.googleapis.com "$P"
if [[ -z $PROJECT_NUMBER ]]; then
  capture PROJECT_NUMBER PROJECT_NUMBER gcloud projects describe "$PROJECT" --format='value(projectNumber)'
fi
PUBSUB_AGENT=service-$PROJECT_NUMBER@gcp-sa-pubsub.iam.gserviceaccount.com

# ---- 2. Service accounts ----
section "Service accounts (one identity per role; grants follow each resource)"
ensure gcloud iam service-accounts describe "$SERVER_SA" "$P" :: \
  gcloud iam service-accounts create "$SERVER_SA_NAME" --display-name="longrun server" "$P"
if [[ $WORKERS == pull ]]; then
  ensure gcloud iam service-accounts describe "$WORKER_SA" "$P" :: \
    gcloud iam service-accounts create "$WORKER_SA_NAME" --display-name="longrun pull worker" "$P"
else
  ensure gcloud iam service-accounts describe "$WORKER_SA" "$P" :: \
    gcloud iam service-accounts create "$WORKER_SA_NAME" --display-name="longrun push worker" "$P"
  ensure gcloud iam service-accounts describe "$PUSH_SA" "$P" :: \
    gcloud iam service-accounts create "$PUSH_SA_NAME" --display-name="longrun Pub/Sub push identity" "$P"
fi

# ---- 3. Firestore ----
section "Firestore: database ($FIRESTORE_DATABASE, native mode), indexes, TTL"
ensure gcloud firestore databases describe "$D" "$P" :: \
  gcloud firestore databases create "$D" --location="$FIRESTORE_LOCATION" --type=firestore-native "$P"
if ((!DRY_RUN)); then
  db_type=$(gcloud firestore databases describe "$D" "$P" --format='value(type)')
  [[ $db_type == FIRESTORE_NATIVE ]] || die "database $FIRESTORE_DATABASE is $db_type, not FIRESTORE_NATIVE; set FIRESTORE_DATABASE to another database id"
fi
# Store documents: the operation store reads and writes them (project-wide: Firestore has no per-collection IAM).
bind gcloud projects add-iam-policy-binding "$PROJECT" \
  --member="serviceAccount:$SERVER_SA" --role=roles/datastore.user --condition=None
bind gcloud projects add-iam-policy-binding "$PROJECT" \
  --member="serviceAccount:$WORKER_SA" --role=roles/datastore.user --condition=None
note "from $(basename "$INDEXES_FILE"): composite indexes (built in the background, --async)"
while IFS=$'\t' read -r -a entry; do
  [[ ${entry[0]} == composite ]] || continue
  configs=()
  for field in "${entry[@]:3}"; do
    configs+=("--field-config=$field")
  done
  create_once gcloud firestore indexes composite create --collection-group="${entry[1]}" \
    --query-scope="${entry[2]}" "${configs[@]}" "$D" --async "$P"
done <<<"$index_lines"
note "field index settings (exemptions keep large blobs out of the indexes)"
while IFS=$'\t' read -r -a entry; do
  [[ ${entry[0]} == field ]] || continue
  settings=(--disable-indexes)
  if ((${#entry[@]} > 3)); then
    settings=()
    for index in "${entry[@]:3}"; do
      settings+=("--index=$index")
    done
  fi
  run gcloud firestore indexes fields update "${entry[2]}" --collection-group="${entry[1]}" \
    "${settings[@]}" "$D" "$P"
done <<<"$index_lines"
note "TTL policy: Firestore deletes operations some time after their expire_time"
while IFS=$'\t' read -r -a entry; do
  [[ ${entry[0]} == ttl ]] || continue
  run gcloud firestore fields ttls update "${entry[2]}" --collection-group="${entry[1]}" \
    --enable-ttl "$D" --async "$P"
done <<<"$index_lines"

# ---- 4. Pub/Sub ----
section "Pub/Sub: topics and subscriptions"
ensure gcloud pubsub topics describe "$TOPIC" "$P" :: gcloud pubsub topics create "$TOPIC" "$P"
ensure gcloud pubsub topics describe "$DEAD_LETTER_TOPIC" "$P" :: \
  gcloud pubsub topics create "$DEAD_LETTER_TOPIC" "$P"
ensure gcloud pubsub subscriptions describe "$INSPECT_SUBSCRIPTION" "$P" :: \
  gcloud pubsub subscriptions create "$INSPECT_SUBSCRIPTION" --topic="$DEAD_LETTER_TOPIC" \
  --ack-deadline=10 "$P"
if [[ $WORKERS == pull ]]; then
  QUEUE_SUBSCRIPTION=$SUBSCRIPTION
  ACK_DEADLINE=$PULL_ACK_DEADLINE
  ensure gcloud pubsub subscriptions describe "$SUBSCRIPTION" "$P" :: \
    gcloud pubsub subscriptions create "$SUBSCRIPTION" --topic="$TOPIC" \
    --ack-deadline="$PULL_ACK_DEADLINE" \
    --dead-letter-topic="$DEAD_LETTER_TOPIC" --max-delivery-attempts="$MAX_DELIVERY_ATTEMPTS" "$P"
else
  # The push subscription is the queue's subscription (created in step 6, once the
  # worker URL is known, and before the server first starts).
  QUEUE_SUBSCRIPTION=$PUSH_SUBSCRIPTION
  ACK_DEADLINE=$PUSH_ACK_DEADLINE
fi
# Server: publishes task messages, on this topic only.
bind gcloud pubsub topics add-iam-policy-binding "$TOPIC" \
  --member="serviceAccount:$SERVER_SA" --role=roles/pubsub.publisher "$P"
# Workers: publish a copy of each dead letter (last attempt failed, or not a task message).
bind gcloud pubsub topics add-iam-policy-binding "$DEAD_LETTER_TOPIC" \
  --member="serviceAccount:$WORKER_SA" --role=roles/pubsub.publisher "$P"
# Pub/Sub itself forwards undeliverable messages to the dead-letter topic.
bind gcloud pubsub topics add-iam-policy-binding "$DEAD_LETTER_TOPIC" \
  --member="serviceAccount:$PUBSUB_AGENT" --role=roles/pubsub.publisher "$P"
if [[ $WORKERS == pull ]]; then
  bind gcloud pubsub subscriptions add-iam-policy-binding "$SUBSCRIPTION" \
    --member="serviceAccount:$WORKER_SA" --role=roles/pubsub.subscriber "$P"
  bind gcloud pubsub subscriptions add-iam-policy-binding "$SUBSCRIPTION" \
    --member="serviceAccount:$PUBSUB_AGENT" --role=roles/pubsub.subscriber "$P"
  startup_grants "$SERVER_SA" "$WORKER_SA"
  startup_viewer "$SUBSCRIPTION" "$SERVER_SA" "$WORKER_SA"
else
  startup_grants "$SERVER_SA"
fi

# ---- 5. Page-token secret ----
section "Secret Manager: the page-token signing secret"
if ((DRY_RUN)); then
  printf '+ %s >/dev/null 2>&1 || head -c 32 /dev/urandom | base64 | tr -d %s | %s\n' \
    "$(quote gcloud secrets describe "$SECRET_NAME" "$P")" "$(quote '\n')" \
    "$(quote gcloud secrets create "$SECRET_NAME" --replication-policy=automatic --data-file=- "$P")"
elif gcloud secrets describe "$SECRET_NAME" "$P" >/dev/null 2>&1; then
  note "exists, kept: secret $SECRET_NAME"
else
  note "creating secret $SECRET_NAME from 32 random bytes (the value is never printed)"
  printf '+ %s\n' "$(quote gcloud secrets create "$SECRET_NAME" --replication-policy=automatic --data-file=- "$P")"
  head -c 32 /dev/urandom | base64 | tr -d '\n' |
    gcloud secrets create "$SECRET_NAME" --replication-policy=automatic --data-file=- "$P"
fi
bind gcloud secrets add-iam-policy-binding "$SECRET_NAME" \
  --member="serviceAccount:$SERVER_SA" --role=roles/secretmanager.secretAccessor "$P"

# ---- 5b. Task-message signing keys ----
# The server signs every task message, workers verify it (docs/security.md): one
# key ring, kid:secret[,kid:secret], shared by the server and the workers.
section "Secret Manager: the task-message signing keys"
if ((DRY_RUN)); then
  printf '+ %s >/dev/null 2>&1 || { printf k1:; head -c 32 /dev/urandom | od -An -tx1 | tr -d %s; } | %s\n' \
    "$(quote gcloud secrets describe "$SIGNING_SECRET_NAME" "$P")" "$(quote ' \n')" \
    "$(quote gcloud secrets create "$SIGNING_SECRET_NAME" --replication-policy=automatic --data-file=- "$P")"
elif gcloud secrets describe "$SIGNING_SECRET_NAME" "$P" >/dev/null 2>&1; then
  note "exists, kept: secret $SIGNING_SECRET_NAME"
else
  note "creating secret $SIGNING_SECRET_NAME: key k1, 32 random bytes (the value is never printed)"
  printf '+ %s\n' "$(quote gcloud secrets create "$SIGNING_SECRET_NAME" --replication-policy=automatic --data-file=- "$P")"
  { printf k1:; head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n'; } |
    gcloud secrets create "$SIGNING_SECRET_NAME" --replication-policy=automatic --data-file=- "$P"
fi
for sa in "$SERVER_SA" "$WORKER_SA"; do
  bind gcloud secrets add-iam-policy-binding "$SIGNING_SECRET_NAME" \
    --member="serviceAccount:$sa" --role=roles/secretmanager.secretAccessor "$P"
done
signing_secret="LONGRUN_MESSAGE_SIGNING_KEYS=$SIGNING_SECRET_NAME:latest"

# Settings every longrun process shares (names of lro settings; see docs/deploy.md).
common_env=LONGRUN_STORE=firestore,LONGRUN_QUEUE=pubsub,GOOGLE_CLOUD_PROJECT=$PROJECT
common_env+=,LONGRUN_FIRESTORE_DATABASE=$FIRESTORE_DATABASE,LONGRUN_FIRESTORE_COLLECTION=$COLLECTION
common_env+=,LONGRUN_PUBSUB_TOPIC=$TOPIC,LONGRUN_PUBSUB_DEAD_LETTER_TOPIC=$DEAD_LETTER_TOPIC
common_env+=,LONGRUN_PUBSUB_SUBSCRIPTION=$QUEUE_SUBSCRIPTION
common_env+=,LONGRUN_VISIBILITY_TIMEOUT=$ACK_DEADLINE,LONGRUN_MAX_DELIVERIES=$MAX_DELIVERY_ATTEMPTS
worker_env=$common_env,LONGRUN_CONCURRENCY=$WORKER_CONCURRENCY,LONGRUN_SHUTDOWN_GRACE=$SHUTDOWN_GRACE

# ---- 6. Workers ----
if [[ $WORKERS == push ]]; then
  section "Push workers: private Cloud Run service $WORKER_SERVICE, push subscription $PUSH_SUBSCRIPTION"
  push_env=$worker_env,LONGRUN_PUSH_ALLOWED_SA=$PUSH_SA
  worker_url=""
  if ((DRY_RUN)); then
    note "(a re-run first looks up the URL of an existing $WORKER_SERVICE and deploys with LONGRUN_PUSH_AUDIENCE set)"
  else
    printf '+ %s\n' "$(quote gcloud run services describe "$WORKER_SERVICE" "$R" "$P" --format='value(status.url)')"
    worker_url=$(gcloud run services describe "$WORKER_SERVICE" "$R" "$P" --format='value(status.url)' 2>/dev/null || true)
  fi
  # The worker refuses to start without an explicit audience (it never takes one
  # from the request): a first deploy gets the service's deterministic URL, and
  # the URL Cloud Run reports is set below once the service exists.
  push_env+=,LONGRUN_PUSH_AUDIENCE=${worker_url:-https://$WORKER_SERVICE-$PROJECT_NUMBER.$REGION.run.app}
  run gcloud run deploy "$WORKER_SERVICE" --image="$IMAGE" "$R" "$P" \
    --service-account="$WORKER_SA" --no-allow-unauthenticated \
    --command=longrun-worker --args=--push \
    --concurrency="$WORKER_CONCURRENCY" --timeout="$PUSH_ACK_DEADLINE" \
    --set-env-vars="$push_env" --set-secrets="$signing_secret"
  if [[ -z $worker_url ]]; then
    capture worker_url https://WORKER_URL \
      gcloud run services describe "$WORKER_SERVICE" "$R" "$P" --format='value(status.url)'
    run gcloud run services update "$WORKER_SERVICE" "$R" "$P" \
      --update-env-vars="LONGRUN_PUSH_AUDIENCE=$worker_url"
  fi
  # Only the push identity may call the worker service.
  bind gcloud run services add-iam-policy-binding "$WORKER_SERVICE" "$R" "$P" \
    --member="serviceAccount:$PUSH_SA" --role=roles/run.invoker
  # Pub/Sub mints the push identity's OIDC tokens.
  bind gcloud iam service-accounts add-iam-policy-binding "$PUSH_SA" "$P" \
    --member="serviceAccount:$PUBSUB_AGENT" --role=roles/iam.serviceAccountTokenCreator
  push_config=(--push-endpoint="$worker_url/push" --push-auth-service-account="$PUSH_SA"
    --push-auth-token-audience="$worker_url")
  push_check=(gcloud pubsub subscriptions describe "$PUSH_SUBSCRIPTION" "$P")
  push_create=(gcloud pubsub subscriptions create "$PUSH_SUBSCRIPTION" --topic="$TOPIC"
    "${push_config[@]}" --ack-deadline="$PUSH_ACK_DEADLINE"
    --min-retry-delay="$MIN_RETRY_DELAY" --max-retry-delay="$MAX_RETRY_DELAY"
    --dead-letter-topic="$DEAD_LETTER_TOPIC" --max-delivery-attempts="$MAX_DELIVERY_ATTEMPTS" "$P")
  if ((DRY_RUN)); then
    ensure "${push_check[@]}" :: "${push_create[@]}"
  elif "${push_check[@]}" >/dev/null 2>&1; then
    note "exists: $PUSH_SUBSCRIPTION; pointing it at the current worker URL"
    run gcloud pubsub subscriptions modify-push-config "$PUSH_SUBSCRIPTION" "${push_config[@]}" "$P"
  else
    run "${push_create[@]}"
  fi
  bind gcloud pubsub subscriptions add-iam-policy-binding "$PUSH_SUBSCRIPTION" \
    --member="serviceAccount:$PUBSUB_AGENT" --role=roles/pubsub.subscriber "$P"
  startup_viewer "$PUSH_SUBSCRIPTION" "$SERVER_SA"
else
  section "Pull workers: Cloud Run worker pool $WORKER_POOL ($WORKER_INSTANCES instances)"
  run gcloud beta run worker-pools deploy "$WORKER_POOL" --image="$IMAGE" "$R" "$P" \
    --service-account="$WORKER_SA" --command=longrun-worker \
    --scaling="$WORKER_INSTANCES" --set-env-vars="$worker_env" --set-secrets="$signing_secret"
fi

# ---- 7. Server ----
section "Server: Cloud Run service $SERVER_SERVICE (gRPC, end-to-end HTTP/2, private)"
# The container must listen on 0.0.0.0 to be reached, and the server refuses a
# non-loopback address without authentication unless told otherwise. Here Cloud
# Run authenticates every caller before a request reaches the container
# (--no-allow-unauthenticated: an ID token of a roles/run.invoker member), so
# LONGRUN_ALLOW_UNAUTHENTICATED=true says so.
server_env=$common_env,LONGRUN_ADDRESS=0.0.0.0:50051,LONGRUN_ALLOW_UNAUTHENTICATED=true
run gcloud run deploy "$SERVER_SERVICE" --image="$IMAGE" "$R" "$P" \
  --service-account="$SERVER_SA" --no-allow-unauthenticated \
  --use-http2 --port=50051 --command=longrun-server \
  --min-instances="$SERVER_MIN_INSTANCES" --no-cpu-throttling \
  --concurrency=1000 --timeout="$SERVER_TIMEOUT" \
  --set-env-vars="$server_env" \
  --set-secrets="LONGRUN_PAGE_TOKEN_SECRET=$SECRET_NAME:latest,$signing_secret"
for member in ${invokers[@]+"${invokers[@]}"}; do
  bind gcloud run services add-iam-policy-binding "$SERVER_SERVICE" "$R" "$P" \
    --member="$member" --role=roles/run.invoker
done
server_url=""
capture server_url https://SERVER_URL \
  gcloud run services describe "$SERVER_SERVICE" "$R" "$P" --format='value(status.url)'

section "Done"
server_host=${server_url#https://}
note "server: $server_url (gRPC over TLS on port 443; callers need roles/run.invoker)"
note "try: grpcurl -H \"authorization: Bearer \$(gcloud auth print-identity-token)\" $server_host:443 list"
