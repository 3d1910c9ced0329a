"""Names every layer agrees on: the served model, its tensors and files, Triton's ports.

Training writes them into the exported model, packaging into config.pbtxt, the
client and the smoke test send them: one definition keeps the four in step.
"""

from __future__ import annotations

MODEL_NAME = "dogs_cats"
INPUT_NAME = "image"  # uint8 [N, size, size, 3] RGB
ENCODED_INPUT_NAME = "image_bytes"  # the ensemble's input: encoded JPEG/PNG bytes
OUTPUT_NAME = "probabilities"  # float32 [N, classes], in labels.txt order
LABELS_FILE = "labels.txt"
INT8_MODEL_FILE = "model.int8.onnx"  # training's INT8 twin of model.onnx, beside it
SHARD_SLOTS = 4  # the batch stage's classify_shard tasks one run runs at once; shards are sized for it

# tritonserver's own defaults, kept on every platform so a client needs no port map.
HTTP_PORT, GRPC_PORT, METRICS_PORT = 8000, 8001, 8002
# Triton's APIs that change the server or write files (loading a model runs its code; trace
# and logging settings name files), behind a header only the deployment holds. Inference,
# health, metadata, model config and statistics stay open.
ADMIN_KEY_HEADER = "dogs-cats-admin-key"
RESTRICTED_TRITON_APIS = ("model-repository", "shared-memory", "trace", "logging")
# Every tritonserver exports latency quantiles (nv_inference_request_summary_us) beside its
# counters: the p50/p99 that Prometheus records (deploy/monitoring.py) come from them.
TRITON_METRICS_FLAG = "--metrics-config=summary_latencies=true"
# Prometheus scrapes Triton and evaluates its recording rules this often, and KEDA asks it
# for the autoscaling signal this often (deploy/monitoring.py, deploy/kubernetes.py).
SCRAPE_INTERVAL_S = 5
KEDA_POLLING_INTERVAL_S = 15
# A model idling at zero must stay up until its last requests reach KEDA's signal: KEDA
# counts the idle time from its last poll under a wake hold (up to one polling interval
# before the hold's release), and the load shows after a scrape and a rule evaluation.
# Shorter, KEDA could take the last pod away first, then read that load while the pod was
# still scraped in its shutdown, and wake the model again with nothing asking. Twice that.
MIN_SERVING_IDLE_S = 2 * (KEDA_POLLING_INTERVAL_S + 2 * SCRAPE_INTERVAL_S)

KAGGLE_CATS_AND_DOGS_URL = (
    "https://download.microsoft.com/download/3/E/1/"
    "3E1C3F21-ECDB-4869-8368-6DEBA77B919F/kagglecatsanddogs_5340.zip"
)


def ensemble_name(model_name: str) -> str:
    """The ensemble that decodes encoded images server-side, then classifies."""
    return f"{model_name}_jpeg"


def preprocess_name(model_name: str) -> str:
    """The python-backend model that decodes encoded images inside the ensemble."""
    return f"{model_name}_preprocess"
