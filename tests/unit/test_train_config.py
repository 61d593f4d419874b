"""train.py's flags: the original script's names still work, every flag has help, bad combinations fail early."""

from __future__ import annotations

import pytest

from hivedata.train.config import build_parser, fill_defaults, parse_args

ORIGINAL_FLAGS = ["--bucket_name", "--train_prefix", "--val_prefix", "--device", "--initial_peer",
                  "--announce_gcs_path", "--fetch_gcs_path", "--batch_size", "--target_batch_size", "--lr",
                  "--epochs", "--host_port", "--val_every", "--val_batches", "--num_workers"]
NEW_FLAGS = ["--arch", "--image_size", "--backend", "--run_id", "--checkpoint_dir", "--resume", "--identity_path",
             "--client_mode", "--announce_maddr", "--matchmaking_time", "--averaging_timeout", "--val_labels",
             "--max_missing", "--ca_bundle", "--http_version", "--strict_decode"]


def test_every_flag_exists_with_help():
    actions = {opt: a for a in build_parser()._actions for opt in a.option_strings}
    for flag in ORIGINAL_FLAGS + NEW_FLAGS + ["--bucket"]:
        assert flag in actions, flag
        assert actions[flag].help, flag


def test_original_flags_keep_their_meaning():
    a = parse_args(["--bucket_name", "b", "--initial_peer", "/ip4/1.2.3.4/tcp/1/p2p/X", "--initial_peer",
                    "/ip4/5.6.7.8/tcp/2/p2p/Y", "--batch_size", "32", "--target_batch_size", "4096",
                    "--host_port", "31337", "--announce_gcs_path", "gs://b/peers.txt"])
    assert a.bucket == "b" and len(a.initial_peer) == 2 and a.host_port == 31337
    assert parse_args(["--bucket", "c"]).bucket == "c"


@pytest.mark.parametrize("argv,message", [
    (["--batch_size", "0"], "--batch_size must be positive"),
    (["--batch_size", "64", "--target_batch_size", "32"], "smaller than --batch_size"),
    (["--resume"], "--resume needs --checkpoint_dir"),
    (["--bucket", "b", "--peers", "2"], "embedded default only"),
    (["--client_mode", "--announce_gcs_path", "gs://b/x"], "not reachable"),
    (["--target_accuracy", "80"], "fraction"),
    (["--lr", "-1"], "--lr must be positive"),
    (["--shuffle", "block", "--block_size", "0"], "--block_size must be positive"),
    (["--cache_dir", "/tmp/c", "--cache_size", "lots"], "--cache_size"),
    (["--shuffle", "blocks"], "invalid choice"),
    (["--max_missing", "1.5"], "--max_missing"),
    (["--max_missing", "-1"], "max_missing must be >= 0"),
    (["--max_missing", "some"], "not a number"),
])
def test_bad_combinations_are_refused_before_anything_starts(argv, message, capsys):
    with pytest.raises(SystemExit) as ei:
        parse_args(argv)
    assert ei.value.code == 2
    assert message in capsys.readouterr().err


def test_defaults_depend_on_embedded_or_real():
    emb = fill_defaults(parse_args([]), embedded=True)
    assert emb.arch == "resnet18" and emb.image_size == 64
    real = fill_defaults(parse_args(["--bucket", "b", "--target_batch_size", "1024"]), embedded=False)
    assert real.arch == "resnet50" and real.image_size == 224 and real.lr == pytest.approx(0.4)


def test_max_missing_is_a_count_or_a_fraction_and_none_by_default():
    assert parse_args([]).max_missing == 0
    count = parse_args(["--max_missing", "50"]).max_missing
    fraction = parse_args(["--max_missing", "0.001"]).max_missing
    assert count == 50 and isinstance(count, int)
    assert fraction == 0.001 and isinstance(fraction, float)
    assert "fraction" in next(a.help for a in build_parser()._actions if "--max_missing" in a.option_strings)


def test_coverage_is_per_peer_by_default_and_swarm_settings_are_checked(capsys):
    from hivedata.train.parts import coverage_block

    assert parse_args([]).coverage == "peer"
    a = parse_args(["--coverage", "swarm", "--claim_ttl", "5"])
    assert (a.coverage, a.claim_ttl, a.coverage_block) == ("swarm", 5.0, None)
    a.batch_size = 32
    assert coverage_block(a, 1000) == 32 and coverage_block(a, 10**6) == 1024  # 1/32 of a small set, at least a batch
    a.coverage_block = 100
    assert coverage_block(a, 10**6) == 100
    for argv, message in ((["--claim_ttl", "1"], "--claim_ttl must be at least 3"),
                          (["--coverage_block", "0"], "--coverage_block must be positive"),
                          (["--coverage", "global"], "invalid choice")):
        with pytest.raises(SystemExit):
            parse_args(argv)
        assert message in capsys.readouterr().err
