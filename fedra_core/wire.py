"""The names of what travels between the ServerApp and the ClientApp: record names, config keys the
server sends, metric keys the nodes reply with. Both apps import them from here, so a key is
spelled once; ``server_app/validation.py`` type-checks every reply key listed here.

A method's own per-round values (``Method.round_config``) are the method's to name.
"""

# records of a message
ARRAYS = "arrays"    # ArrayRecord: the trainable state a node receives or returns, keyed by global block index
CONTEXT = "context"  # ArrayRecord: read-only global state a node needs besides its own (head calibration)
CONFIG = "config"    # ConfigRecord
METRICS = "metrics"  # MetricRecord

# server -> node (config record of train / evaluate / query messages)
SERVER_ROUND = "server-round"
BLOCKS = "blocks"            # the node's sorted global block indices (evaluation: the global model's blocks)
FINGERPRINT = "fingerprint"  # of the frozen backbone; a node with other weights refuses
METHOD = "method"
SEED = "seed"
DP_CLIP_NORM = "dp-clip-norm"  # train only, DP runs: the node clips its whole update to this L2 norm

# node -> server: train reply metrics
NUM_EXAMPLES = "num-examples"
EXAMPLES_SEEN = "examples-seen"
STEPS = "steps"
TRAIN_LOSS = "train-loss"
CAPACITY = "capacity-layers"  # also a query-reply metric and a node-config key
TIME_PREFIX = "t-"            # t-<phase>: seconds a phase took on the node
TIME_END = "t-end"            # the node's clock when it replied

# node -> server: evaluation reply metrics (and NUM_EXAMPLES)
ACCURACY = "accuracy"
LOSS = "loss"
CORRECT = "correct"

# node -> server: capacity-query reply (metrics, then config)
PARTITION_ID = "partition-id"
NUM_TRAIN = "num-train"
NUM_TEST = "num-test"
DOMAIN = "domain"
EVAL_SET = "eval-set"  # id of a test split shared by several nodes (simulation), "" when the node's own
DEVICE = "device"

# --- secure aggregation: the ConfigRecord of its stages and of a masked train message; its keys and
# message names are in fedra_core/secagg_wire.py ---
SECAGG = "secagg"
