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
TARGETS = "targets"  # predictions scored: the examples (classification), the response tokens (causal LM); absent: num-examples

# node -> server: capacity-query reply (metrics, then config)
PARTITION_ID = "partition-id"
NUM_TRAIN = "num-train"
NUM_TEST = "num-test"
DOMAIN = "domain"
EVAL_SET = "eval-set"  # id of a test split shared by several nodes (simulation), "" when the node's own
DEVICE = "device"



class SecAgg:
    """Secure aggregation's stages of one round (server_app/secure_aggregation.py drives them,
    client_app/secure_aggregation.py answers): ``query.secagg_setup`` (each node makes its key pairs
    and sends the public halves), ``query.secagg_shares`` (the public keys out; each node's
    encrypted Shamir shares back, one per other node), the ``train`` message (the shares routed to
    their recipient, the segment table; the masked update back) and ``query.secagg_unmask`` (who
    survived; the survivors' self-seed shares and the dropped nodes' key shares back). Every such
    message carries one ConfigRecord, ``RECORD``, with these keys."""

    RECORD = "secagg"
    # message types (query.<name>)
    SETUP = "secagg_setup"
    SHARES = "secagg_shares"
    UNMASK = "secagg_unmask"

    # keys of the record
    ROUND = "round"
    INDEX = "index"              # the node's participant index this round
    NUM = "num"                  # participants of the key advertisement
    THRESHOLD = "threshold"      # Shamir threshold t
    ENC_KEY = "enc-key"          # node -> server: public key for share encryption (X9.62 compressed point)
    MASK_KEY = "mask-key"        # node -> server: public key for pairwise mask agreement
    INDEXES = "indexes"          # server -> node: participants that advertised keys, with ENC_KEYS/MASK_KEYS aligned
    ENC_KEYS = "enc-keys"
    MASK_KEYS = "mask-keys"
    SHARE_DST = "share-dst"      # node -> server: recipient index of each encrypted share
    SHARE_SRC = "share-src"      # server -> node: sender index of each encrypted share
    CIPHERTEXTS = "ciphertexts"  # encrypted (src, dst, self-seed share, mask-key share)
    MASKERS = "maskers"          # server -> node: participants that sent their shares (they mask this round)
    SCALE = "scale"              # quantisation levels Q of the clipping range
    WEIGHT_REF = "weight-ref"    # example count of weight 1 (examples aggregation)
    SURVIVORS = "survivors"      # server -> node: participants whose masked update arrived
    DROPPED = "dropped"          # server -> node: maskers whose masked update did not
    SELF_SHARES = "self-shares"  # node -> server: its shares of the survivors' self seeds (SURVIVORS order)
    KEY_SHARES = "key-shares"    # node -> server: its shares of the dropped nodes' mask keys (DROPPED order)
    SEG_KEYS = "seg-keys"
    SEG_KEY_COUNTS = "seg-key-counts"
    SEG_SIZES = "seg-sizes"
    SEG_HOLDERS = "seg-holders"
    SEG_HOLDER_COUNTS = "seg-holder-counts"


SECAGG = SecAgg.RECORD  # the record of the secure-aggregation stages and of a masked train message
