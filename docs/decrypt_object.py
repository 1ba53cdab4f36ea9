#!/usr/bin/env python3
"""Decrypt one object of an encrypted pgdr repository without pgdr (docs/encryption.md).

Needs Python 3.8+ and the `cryptography` package (`pip install cryptography`, or Debian's
`python3-cryptography`). Usage:

    PGDR_PASSPHRASE='...' python3 decrypt_object.py OBJECT OUTPUT
    python3 decrypt_object.py --key-file /etc/pgdr/local.key OBJECT OUTPUT

OUTPUT gets the object's plaintext (WAL and backups are then zstd: `zstd -d`). The script is kept
independent of pgdr on purpose: it is the proof that the documented format is all a key holder needs.
"""

import argparse
import hashlib
import hmac
import os
import sys

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF


def main() -> int:
    parser = argparse.ArgumentParser(description="decrypt one pgdr repository object")
    parser.add_argument("object")
    parser.add_argument("output")
    parser.add_argument("--key-file", help="the repository's key file (64 hex digits)")
    args = parser.parse_args()

    with open(args.object, "rb") as src:
        header = src.read(72)
        if header[:8] != b"PGDRENC\x01":
            sys.exit("not a pgdr encrypted object (version 1)")
        kdf, exponent, scrypt_salt, object_salt, check = (
            header[8],
            header[9],
            header[12:28],
            header[28:60],
            header[60:72],
        )
        if kdf == 0:
            if not args.key_file:
                sys.exit("this object was encrypted with a key file: pass --key-file")
            with open(args.key_file) as fh:
                master = bytes.fromhex(fh.read().strip())
        else:
            passphrase = os.environ.get("PGDR_PASSPHRASE", "")
            if not passphrase:
                sys.exit("this object was encrypted with a passphrase: set PGDR_PASSPHRASE")
            master = hashlib.scrypt(
                passphrase.encode(), salt=scrypt_salt, n=1 << 15, r=8, p=1, maxmem=64 << 20, dklen=32
            )
        if not hmac.compare_digest(hmac.new(master, b"pgdr key check", hashlib.sha256).digest()[:12], check):
            sys.exit("wrong passphrase or key")
        key = HKDF(algorithm=hashes.SHA256(), length=32, salt=object_salt, info=b"pgdr object v1").derive(master)
        aead, chunk = AESGCM(key), 1 << exponent
        with open(args.output, "wb") as out:
            counter = 0
            while True:
                sealed = src.read(chunk + 16)
                last = len(sealed) < chunk + 16
                nonce = counter.to_bytes(11, "big") + (b"\x01" if last else b"\x00")
                try:
                    out.write(aead.decrypt(nonce, sealed, header))
                except InvalidTag:
                    os.unlink(args.output)
                    sys.exit(f"chunk {counter} fails authentication: the object is damaged or was tampered with")
                if last:
                    return 0
                counter += 1


if __name__ == "__main__":
    sys.exit(main())
