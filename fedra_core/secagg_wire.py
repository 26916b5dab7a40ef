"""What travels in the secure-aggregation stages: message names, the keys of their ``secagg``
ConfigRecord, and the segment table (:class:`fedra_core.secure_sum.Segment`) as flat lists.

Stages of one round (server_app/secure_aggregation.py drives them, client_app/secure_aggregation.py
answers): ``query.secagg_setup`` (each node makes its key pairs and sends the public halves),
``query.secagg_shares`` (the public keys out; each node's encrypted Shamir shares back, one per
other node), the ``train`` message (the shares routed to their recipient, the segment table; the
masked update back) and ``query.secagg_unmask`` (who survived; the survivors' self-seed shares and
the dropped nodes' key shares back).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from fedra_core.secure_sum import SecAggError, Segment
from fedra_core.wire import SECAGG as RECORD  # noqa: F401  (the record every secure-aggregation message carries)

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


def table_to_config(segments: Sequence[Segment]) -> dict[str, list]:
    """Return the segment table as five flat lists (keys, sizes and holders, with per-segment counts)."""
    return {
        SEG_KEYS: [k for s in segments for k in s.keys],
        SEG_KEY_COUNTS: [len(s.keys) for s in segments],
        SEG_SIZES: [n for s in segments for n in s.sizes],
        SEG_HOLDERS: [h for s in segments for h in s.holders],
        SEG_HOLDER_COUNTS: [len(s.holders) for s in segments],
    }


def table_from_config(config: Mapping) -> list[Segment]:
    """Read the segment table written by :func:`table_to_config`; SecAggError when it is malformed."""
    try:
        keys, key_counts, sizes = list(config[SEG_KEYS]), list(config[SEG_KEY_COUNTS]), list(config[SEG_SIZES])
        holders, holder_counts = list(config[SEG_HOLDERS]), list(config[SEG_HOLDER_COUNTS])
    except (KeyError, TypeError):
        raise SecAggError("the segment table is missing or not lists") from None
    if (len(key_counts) != len(holder_counts) or sum(key_counts) != len(keys) or len(sizes) != len(keys)
            or sum(holder_counts) != len(holders) or any(c < 0 for c in key_counts + holder_counts)):
        raise SecAggError("the segment table's counts do not match its lists")
    segments, k, h = [], 0, 0
    for sid, (nk, nh) in enumerate(zip(key_counts, holder_counts)):
        seg_holders = tuple(int(x) for x in holders[h:h + nh])
        if list(seg_holders) != sorted(set(seg_holders)):
            raise SecAggError(f"segment {sid}'s holders are not distinct and sorted")
        segments.append(Segment(sid, tuple(str(x) for x in keys[k:k + nk]), tuple(int(x) for x in sizes[k:k + nk]), seg_holders))
        k, h = k + nk, h + nh
    return segments
