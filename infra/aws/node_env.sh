# Sourced by infra/aws/cluster.yaml's start commands on every node, before `ray start`: what Ray's processes (and so
# every job and worker) find in their environment. No secret is written here: the MLflow pipeline user's
# credentials are read from AWS Secrets Manager (the node's instance profile needs secretsmanager:GetSecretValue on
# that secret) each time Ray starts. Replace the placeholders before `ray up`.
export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH="$HOME/.ray/auth_token"
export PBP_RUNS_BUCKET=YOUR-RUNS-BUCKET PBP_DATA_BUCKET=YOUR-DATA-BUCKET    # pbp's default names are the local stack's
export MLFLOW_TRACKING_URI=https://YOUR-MLFLOW-HOST
# A secret whose SecretString is {"username": "...", "password": "..."} (the pipeline user of infra/k8s/mlflow.md).
_pbp_mlflow=$(aws secretsmanager get-secret-value --secret-id YOUR-MLFLOW-SECRET-ID --query SecretString --output text) \
  || { echo "node_env.sh: cannot read the MLflow secret (instance profile permissions?)" >&2; return 1; }
export MLFLOW_TRACKING_USERNAME=$(printf '%s' "$_pbp_mlflow" | python3 -c 'import json,sys; print(json.load(sys.stdin)["username"])')
export MLFLOW_TRACKING_PASSWORD=$(printf '%s' "$_pbp_mlflow" | python3 -c 'import json,sys; print(json.load(sys.stdin)["password"])')
unset _pbp_mlflow
