#!/usr/bin/env python3
"""Known-answer vectors for the SPDM 1.2 key schedule (DSP0274 section 12) and DSP0277 secured
messages over PCI DOE, computed with the Python `cryptography` package, independently of the
Rust code under test. Regenerate with:  python3 spdm_keys.py > spdm_keys.txt
Each output line is `name hex`.
"""
import hashlib
import hmac

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

H = 48


def hkdf_extract(salt: bytes, ikm: bytes) -> bytes:
    return hmac.new(salt, ikm, hashlib.sha384).digest()


def hkdf_expand(prk: bytes, info: bytes, length: int) -> bytes:
    return HKDFExpand(algorithm=hashes.SHA384(), length=length, info=info).derive(prk)


def bin_concat(length: int, label: str, context: bytes = b"", version: str = "1.2") -> bytes:
    return length.to_bytes(2, "little") + f"spdm{version} ".encode() + label.encode() + context


def out(name: str, value: bytes) -> None:
    print(name, value.hex())


shared = bytes(range(1, 49))
th1 = hashlib.sha384(b"TH1 transcript").digest()
th2 = hashlib.sha384(b"TH2 transcript").digest()
finish_th = hashlib.sha384(b"transcript up to FINISH").digest()
out("input.shared", shared)
out("input.th1", th1)
out("input.th2", th2)
out("input.finish_th", finish_th)

handshake = hkdf_extract(bytes(H), shared)
req_hs = hkdf_expand(handshake, bin_concat(H, "req hs data", th1), H)
rsp_hs = hkdf_expand(handshake, bin_concat(H, "rsp hs data", th1), H)
out("handshake_secret", handshake)
out("req_hs_secret", req_hs)
out("rsp_hs_secret", rsp_hs)
for name, secret in (("req_hs", req_hs), ("rsp_hs", rsp_hs)):
    out(f"{name}.key", hkdf_expand(secret, bin_concat(32, "key"), 32))
    out(f"{name}.iv", hkdf_expand(secret, bin_concat(12, "iv"), 12))
    out(f"{name}.finished", hkdf_expand(secret, bin_concat(H, "finished"), H))
req_finished = hkdf_expand(req_hs, bin_concat(H, "finished"), H)
rsp_finished = hkdf_expand(rsp_hs, bin_concat(H, "finished"), H)
out("rsp_verify_data", hmac.new(rsp_finished, th1, hashlib.sha384).digest())
out("req_verify_data", hmac.new(req_finished, finish_th, hashlib.sha384).digest())

salt1 = hkdf_expand(handshake, bin_concat(H, "derived"), H)
master = hkdf_extract(salt1, bytes(H))
req_app = hkdf_expand(master, bin_concat(H, "req app data", th2), H)
rsp_app = hkdf_expand(master, bin_concat(H, "rsp app data", th2), H)
out("master_secret", master)
out("req_app_secret", req_app)
out("rsp_app_secret", rsp_app)
out("export_master", hkdf_expand(master, bin_concat(H, "exp master", th2), H))
req_app_key = hkdf_expand(req_app, bin_concat(32, "key"), 32)
req_app_iv = hkdf_expand(req_app, bin_concat(12, "iv"), 12)
out("req_app.key", req_app_key)
out("req_app.iv", req_app_iv)
updated = hkdf_expand(req_app, bin_concat(H, "traffic upd"), H)
out("req_app.updated_secret", updated)
out("req_app.updated_key", hkdf_expand(updated, bin_concat(32, "key"), 32))

# A secured message over PCI DOE with the requester's application keys at sequence number 5.
session = 0xFFFEFFFF
message = bytes.fromhex("12fe0000030002010011000110810000efbe0000000000000000000000")[:28]
seq = 5
nonce = bytearray(req_app_iv)
for i, b in enumerate(seq.to_bytes(8, "little")):
    nonce[i] ^= b
length = 2 + len(message) + 16
aad = session.to_bytes(4, "little") + length.to_bytes(2, "little")
sealed = AESGCM(req_app_key).encrypt(bytes(nonce), len(message).to_bytes(2, "little") + message, aad)
payload = aad + sealed
padded = payload + bytes(-len(payload) % 4)
doe = (1).to_bytes(2, "little") + bytes([2, 0]) + ((8 + len(padded)) // 4).to_bytes(4, "little") + padded
out("secured.message", message)
out("secured.object_seq5", doe)
