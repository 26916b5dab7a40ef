"""The node's side of per-block secure aggregation (SecAgg+-style, on the Message API).

Four messages per round, answered here: ``query.secagg_setup`` (fresh key pairs; the public halves
back), ``query.secagg_shares`` (the round's public keys in; a fresh self-mask seed; Shamir shares
of that seed and of the mask key, one encrypted share per other node back), the ``train`` message
(the shares addressed to this node in, stored; the update masked by :func:`masked_arrays`) and
``query.secagg_unmask`` (who survived in; shares of the survivors' seeds and of the dropped nodes'
mask keys back, never both for one node).

The round's secrets live in ``context.state`` (Flower keeps it in the SuperNode's memory across a
run's messages; a new round overwrites them). Every instruction of the server is checked against
what this node knows: the threshold against its own run config, that each aggregated block keeps
at least ``secagg-min-holders`` holders, and that the unmasking request is consistent.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Mapping

import numpy as np
import torch
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.common.secure_aggregation.crypto.shamir import create_shares
from flwr.common.secure_aggregation.crypto.symmetric_encryption import decrypt, encrypt, generate_shared_key
from flwr.common.secure_aggregation.secaggplus_utils import share_keys_plaintext_concat, share_keys_plaintext_separate

from fedra_core.wire import SecAgg as sw
from fedra_core import secure_sum as ss
from fedra_core.run_config import RunConfig, load_run_config

CURVE = ec.SECP256R1()
STATE = "fedra-secagg"  # the context.state record of this round's secrets


def public_bytes(key: ec.EllipticCurvePrivateKey) -> bytes:
    """The compressed X9.62 point of ``key``'s public half (33 bytes)."""
    return key.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint)


def load_public(data: bytes) -> ec.EllipticCurvePublicKey:
    """A public key from :func:`public_bytes`; SecAggError when it is no point of the curve."""
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(CURVE, bytes(data))
    except (ValueError, TypeError):
        raise ss.SecAggError("a public key is not a point of P-256") from None


def private_bytes(key: ec.EllipticCurvePrivateKey) -> bytes:
    """The 32-byte private scalar of ``key`` (what is Shamir-shared)."""
    return key.private_numbers().private_value.to_bytes(32, "big")


def load_private(data: bytes) -> ec.EllipticCurvePrivateKey:
    """A private key from :func:`private_bytes`."""
    return ec.derive_private_key(int.from_bytes(bytes(data), "big"), CURVE)


def pair_seed(own: ec.EllipticCurvePrivateKey, other: ec.EllipticCurvePublicKey) -> bytes:
    """The 32-byte seed two nodes agree on (ECDH and HKDF, Flower's ``generate_shared_key``)."""
    return base64.urlsafe_b64decode(generate_shared_key(own, other))


# --- state ----------------------------------------------------------------------------------------
def _cfg(context: Context) -> RunConfig:
    return load_run_config(dict(context.run_config))


def _state(context: Context, server_round: int) -> ConfigRecord:
    if STATE not in context.state:
        raise ss.SecAggError("no secure-aggregation state on this node (setup message missed)")
    state = context.state[STATE]
    if int(state[sw.ROUND]) != server_round:
        raise ss.SecAggError(f"secure-aggregation state is of round {int(state[sw.ROUND])}, the message of round {server_round}")
    return state


def _reply(msg: Message, values: dict) -> Message:
    return Message(RecordDict({sw.RECORD: ConfigRecord(values)}), reply_to=msg)


# --- stages ---------------------------------------------------------------------------------------
def setup(msg: Message, context: Context) -> Message:
    """``query.secagg_setup``: make this round's key pairs, keep the private halves, send the public ones."""
    cfg = _cfg(context)
    config = msg.content[sw.RECORD]
    server_round, index, num, threshold = (int(config[k]) for k in (sw.ROUND, sw.INDEX, sw.NUM, sw.THRESHOLD))
    if not 0 <= index < num or num < 2:
        raise ss.SecAggError(f"participant index {index} of {num}: need 0 <= index < num and num >= 2")
    if threshold < ss.threshold_for(cfg.secagg_threshold, num) or threshold > num:
        raise ss.SecAggError(f"threshold {threshold} of {num} participants is below this run's secagg-threshold {cfg.secagg_threshold}")
    enc, mask = ec.generate_private_key(CURVE), ec.generate_private_key(CURVE)
    context.state[STATE] = ConfigRecord({
        sw.ROUND: server_round, sw.INDEX: index, sw.NUM: num, sw.THRESHOLD: threshold,
        "enc-sk": private_bytes(enc), "mask-sk": private_bytes(mask),
    })
    return _reply(msg, {sw.ENC_KEY: public_bytes(enc), sw.MASK_KEY: public_bytes(mask)})


def share_keys(msg: Message, context: Context) -> Message:
    """``query.secagg_shares``: check the advertised keys, draw the self-mask seed, Shamir-share it
    and the mask key among all advertised nodes and send each other node its shares encrypted."""
    config = msg.content[sw.RECORD]
    state = _state(context, int(config[sw.ROUND]))
    index, num, threshold = int(state[sw.INDEX]), int(state[sw.NUM]), int(state[sw.THRESHOLD])
    indexes = [int(i) for i in config[sw.INDEXES]]
    enc_keys, mask_keys = list(config[sw.ENC_KEYS]), list(config[sw.MASK_KEYS])
    if indexes != sorted(set(indexes)) or not all(0 <= i < num for i in indexes) or len(enc_keys) != len(indexes) or len(mask_keys) != len(indexes):
        raise ss.SecAggError("the advertised keys are not one pair per distinct participant")
    if len(indexes) < threshold:
        raise ss.SecAggError(f"{len(indexes)} participants advertised keys, fewer than the threshold {threshold}")
    enc_sk, mask_sk = load_private(state["enc-sk"]), load_private(state["mask-sk"])
    mine = indexes.index(index) if index in indexes else -1
    if mine < 0 or enc_keys[mine] != public_bytes(enc_sk) or mask_keys[mine] != public_bytes(mask_sk):
        raise ss.SecAggError("the advertised keys do not hold this node's own keys")
    self_seed = os.urandom(32)
    seed_shares = create_shares(self_seed, threshold, num)
    key_shares = create_shares(bytes(state["mask-sk"]), threshold, num)
    dst, ciphertexts = [], []
    for j, enc_pk in zip(indexes, enc_keys):
        if j == index:
            continue
        plaintext = share_keys_plaintext_concat(index, j, seed_shares[j], key_shares[j])
        ciphertexts.append(encrypt(generate_shared_key(enc_sk, load_public(enc_pk)), plaintext))
        dst.append(j)
    state[sw.INDEXES], state[sw.ENC_KEYS], state[sw.MASK_KEYS] = indexes, enc_keys, mask_keys
    state["self-seed"] = self_seed
    state[sw.SHARE_SRC], state[sw.SELF_SHARES], state[sw.KEY_SHARES] = [index], [seed_shares[index]], [key_shares[index]]
    return _reply(msg, {sw.SHARE_DST: dst, sw.CIPHERTEXTS: ciphertexts})


def masked_arrays(
    msg: Message, context: Context, trained: Mapping[str, torch.Tensor], received: Mapping[str, torch.Tensor], num_examples: int,
) -> ArrayRecord:
    """The ``train`` reply's arrays under secure aggregation: store the shares routed to this node,
    check the segment table, then clip, quantise and mask the delta ``trained - received`` of each
    of this node's segments (uint32 vectors keyed by segment id)."""
    cfg = _cfg(context)
    config = msg.content[sw.RECORD]
    server_round = int(config[sw.ROUND])
    state = _state(context, server_round)
    index = int(state[sw.INDEX])
    indexes = [int(i) for i in state[sw.INDEXES]]
    maskers = [int(i) for i in config[sw.MASKERS]]
    if maskers != sorted(set(maskers)) or not set(maskers) <= set(indexes) or index not in maskers:
        raise ss.SecAggError("the maskers are not distinct advertised participants including this node")
    if len(maskers) < int(state[sw.THRESHOLD]):
        raise ss.SecAggError(f"{len(maskers)} maskers, fewer than the threshold {int(state[sw.THRESHOLD])}")
    _store_shares(state, index, maskers, [int(i) for i in config[sw.SHARE_SRC]], list(config[sw.CIPHERTEXTS]))
    segments = ss.table_from_config(config)
    thin = ss.thin_segments(segments, cfg.secagg_min_holders, alive=maskers)
    if thin or any(not set(s.holders) <= set(maskers) for s in segments):
        raise ss.SecAggError(f"a segment has holders outside the maskers or fewer than secagg-min-holders {cfg.secagg_min_holders}")
    mine = ss.segments_of(segments, index)
    if {k for s in mine for k in s.keys} != set(received):
        raise ss.SecAggError("the segment table does not hold exactly the keys this node received")
    scale = int(config[sw.SCALE])
    if scale != ss.scale_for(len(maskers)):
        raise ss.SecAggError(f"scale {scale} is not the one of {len(maskers)} maskers")
    weight = 1.0
    if cfg.aggregation == "examples":
        weight = min(num_examples / float(config[sw.WEIGHT_REF]), 1.0)
    # the server cannot check norms any more: the node clips to max-update-norm here (with DP on,
    # train_client_round already clipped the whole update to dp-clip-norm)
    delta = ss.clip_update({k: (trained[k].double() - received[k].double()).numpy() for k in received}, cfg.max_update_norm)
    encoded = ss.encode_update(delta, weight, mine, cfg.secagg_clip_range, scale, np.random.default_rng(int.from_bytes(os.urandom(16), "little")))
    mask_sk = load_private(state["mask-sk"])
    mask_keys = dict(zip(indexes, state[sw.MASK_KEYS]))
    partners = {v for s in mine for v in s.holders if v != index}
    seeds = {v: pair_seed(mask_sk, load_public(mask_keys[v])) for v in partners}
    masked = ss.mask_update(encoded, index, mine, server_round, bytes(state["self-seed"]), seeds)
    state[sw.MASKERS] = maskers
    state[sw.SEG_HOLDERS] = ss.table_to_config(segments)[sw.SEG_HOLDERS]
    state[sw.SEG_HOLDER_COUNTS] = [len(s.holders) for s in segments]
    return ArrayRecord({str(sid): Array(vec) for sid, vec in masked.items()})


def _store_shares(state: ConfigRecord, index: int, maskers: list[int], src: list[int], ciphertexts: list) -> None:
    """Decrypt the shares the other maskers sent this node and keep them with its own."""
    if sorted(src) != [m for m in maskers if m != index] or len(ciphertexts) != len(src):
        raise ss.SecAggError("the routed shares are not one from each other masker")
    enc_sk = load_private(state["enc-sk"])
    enc_keys = dict(zip((int(i) for i in state[sw.INDEXES]), state[sw.ENC_KEYS]))
    own_src, seed_shares, key_shares = list(state[sw.SHARE_SRC]), list(state[sw.SELF_SHARES]), list(state[sw.KEY_SHARES])
    for j, ciphertext in zip(src, ciphertexts):
        try:
            plaintext = decrypt(generate_shared_key(enc_sk, load_public(enc_keys[j])), bytes(ciphertext))
        except Exception:  # cryptography's InvalidToken and malformed input alike
            raise ss.SecAggError(f"the share from participant {j} does not decrypt") from None
        sender, receiver, seed_share, key_share = share_keys_plaintext_separate(plaintext)
        if (sender, receiver) != (j, index):
            raise ss.SecAggError(f"the share routed from participant {j} names {sender} -> {receiver}")
        own_src.append(j)
        seed_shares.append(seed_share)
        key_shares.append(key_share)
    state[sw.SHARE_SRC], state[sw.SELF_SHARES], state[sw.KEY_SHARES] = own_src, seed_shares, key_shares


def unmask(msg: Message, context: Context) -> Message:
    """``query.secagg_unmask``: check the server's survivors and dropouts (the maskers split in two,
    this node among the survivors, at least the threshold of them, no block left with fewer than
    ``secagg-min-holders`` surviving holders) and send the shares that unmask their sum, once."""
    cfg = _cfg(context)
    config = msg.content[sw.RECORD]
    state = _state(context, int(config[sw.ROUND]))
    if "answered" in state:
        raise ss.SecAggError("this round's unmasking was answered already")
    index, maskers = int(state[sw.INDEX]), [int(i) for i in state[sw.MASKERS]]
    survivors, dropped = [int(i) for i in config[sw.SURVIVORS]], [int(i) for i in config[sw.DROPPED]]
    if sorted(survivors + dropped) != maskers or len(set(survivors)) != len(survivors) or index not in survivors:
        raise ss.SecAggError("survivors and dropped nodes are not a split of the maskers with this node surviving")
    if len(survivors) < int(state[sw.THRESHOLD]):
        raise ss.SecAggError(f"{len(survivors)} survivors, fewer than the threshold {int(state[sw.THRESHOLD])}")
    segments = ss.table_from_config({sw.SEG_KEYS: [], sw.SEG_KEY_COUNTS: [0] * len(state[sw.SEG_HOLDER_COUNTS]), sw.SEG_SIZES: [],
                                     sw.SEG_HOLDERS: state[sw.SEG_HOLDERS], sw.SEG_HOLDER_COUNTS: state[sw.SEG_HOLDER_COUNTS]})
    if ss.thin_segments(segments, cfg.secagg_min_holders, alive=survivors):
        raise ss.SecAggError(f"unmasking would reveal a block summed over fewer than secagg-min-holders {cfg.secagg_min_holders} survivors")
    shares_of = dict(zip((int(i) for i in state[sw.SHARE_SRC]), zip(state[sw.SELF_SHARES], state[sw.KEY_SHARES])))
    if not set(maskers) <= set(shares_of):
        raise ss.SecAggError("this node lacks the shares of some maskers")
    state["answered"] = True
    return _reply(msg, {
        sw.SELF_SHARES: [shares_of[u][0] for u in survivors],
        sw.KEY_SHARES: [shares_of[v][1] for v in dropped],
    })
