"""CURVE key files: owner-only on creation, refused when they are not, usable by libzmq."""
from __future__ import annotations

import stat

import pytest
import zmq

from sync.keys import KeyFileError, generate_keypair_files, load_keypair, load_public_key
from tools import gate_central


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_generated_files_are_owner_only_and_consistent(tmp_path):
    files = generate_keypair_files(tmp_path / "keys", "gate-G1")
    assert _mode(tmp_path / "keys") == 0o700
    assert _mode(files.secret) == 0o600 and _mode(files.public) == 0o600
    pair = load_keypair(files.secret)
    assert load_public_key(files.public) == pair.public
    assert zmq.curve_public(pair.secret) == pair.public
    assert "secret-key" not in files.public.read_text()


def test_refuses_to_overwrite_a_key_unless_asked(tmp_path):
    first = generate_keypair_files(tmp_path, "central")
    old = load_keypair(first.secret)
    with pytest.raises(KeyFileError, match="already exists"):
        generate_keypair_files(tmp_path, "central")
    assert load_keypair(first.secret) == old
    second = generate_keypair_files(tmp_path, "central", overwrite=True)
    assert load_keypair(second.secret) != old


def test_loading_refuses_a_secret_readable_by_others(tmp_path):
    files = generate_keypair_files(tmp_path, "gate-G2")
    files.secret.chmod(0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        load_keypair(files.secret)
    files.secret.chmod(0o600)
    load_keypair(files.secret)


def test_loading_refuses_public_only_mismatched_or_missing_files(tmp_path):
    a = generate_keypair_files(tmp_path, "a")
    b = generate_keypair_files(tmp_path, "b")
    with pytest.raises(KeyFileError, match="no secret key"):
        load_keypair(a.public)
    text = a.secret.read_text().replace(load_public_key(a.public).decode(), load_public_key(b.public).decode())
    a.secret.write_text(text)
    with pytest.raises(KeyFileError, match="does not belong"):
        load_keypair(a.secret)
    with pytest.raises(KeyFileError, match="does not exist"):
        load_keypair(tmp_path / "nope.key_secret")
    (tmp_path / "junk.key").write_text("hello\n")
    with pytest.raises(KeyFileError, match="certificate"):
        load_public_key(tmp_path / "junk.key")


def test_keys_gen_command(tmp_path, capsys):
    assert gate_central.main(["keys", "gen", "--name", "gate-L1", "--out", str(tmp_path / "k")]) == 0
    assert "0600" in capsys.readouterr().out
    load_keypair(tmp_path / "k" / "gate-L1.key_secret")
    assert gate_central.main(["keys", "gen", "--name", "gate-L1", "--out", str(tmp_path / "k")]) == 2
    assert "already exists" in capsys.readouterr().err
