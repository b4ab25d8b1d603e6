"""Nothing lost, nothing leaked: output directories, run locks, stale files, and paths read from files."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lmlab.cli import main
from lmlab.errors import LmlabError
from lmlab.io import sha256_file
from lmlab.model.checkpoint import load_checkpoint
from lmlab.model.hf_dirs import ExportHFConfig, ImportHFConfig, export_hf, import_hf
from lmlab.rundir import LOCK, clean_stale, output_dir, run_lock

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO / "src")}


@pytest.fixture
def ckpt(tiny_model, tmp_path) -> Path:
    """A private copy of the session's tiny checkpoint inside a run directory, which tests may damage."""
    run = tmp_path / "run"
    shutil.copytree(tiny_model, run / "checkpoint")
    (run / "metrics.jsonl").write_text('{"step": 1}\n')
    return run / "checkpoint"


@pytest.fixture
def hf_dir(ckpt, tmp_path) -> Path:
    export_hf(ExportHFConfig(checkpoint=str(ckpt), out=str(tmp_path / "hf")))
    return tmp_path / "hf"


def snapshot(d: Path) -> dict[str, str]:
    """Every file under `d` with its hash (the empty lock file a run leaves is not content)."""
    return {str(p.relative_to(d)): sha256_file(p) for p in sorted(d.rglob("*")) if p.is_file() and p.name != LOCK}


def rehash(ckpt: Path, **edit) -> None:
    """Rewrite meta.json's hashes after tampering, as an attacker who knows the format would."""
    meta = json.loads((ckpt / "meta.json").read_text())
    meta["files"] = {p.name: {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
                     for p in sorted(ckpt.iterdir()) if p.name != "meta.json"}
    meta.update(edit)
    (ckpt / "meta.json").write_text(json.dumps(meta))


# --- 1. output directories ----------------------------------------------------------------------------

def test_export_into_a_directory_with_other_files_is_refused_then_forced(ckpt, tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "notes.txt").write_text("notes")
    with pytest.raises(LmlabError, match="notes.txt.*--force"):
        export_hf(ExportHFConfig(checkpoint=str(ckpt), out=str(victim)))
    assert sorted(p.name for p in victim.iterdir()) == ["notes.txt"]
    assert main(["export-hf", str(ckpt), str(victim), "--force"]) == 0  # a bare --force is a switch
    assert (victim / "notes.txt").read_text() == "notes"
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in victim.iterdir()}


def test_export_onto_the_run_or_the_checkpoint_itself_is_refused(ckpt):
    run, before = ckpt.parent, snapshot(ckpt.parent)
    assert main(["export-hf", str(ckpt), str(run)]) == 2
    with pytest.raises(LmlabError, match="same as its input"):
        export_hf(ExportHFConfig(checkpoint=str(ckpt), out=str(ckpt)))
    with pytest.raises(LmlabError, match="inside its input"):
        export_hf(ExportHFConfig(checkpoint=str(ckpt), out=str(ckpt / "hf")))
    assert snapshot(run) == before
    load_checkpoint(ckpt)


def test_export_over_a_previous_export_replaces_it(ckpt, hf_dir):
    (hf_dir / "tokenizer.json").unlink()  # a file of the verb's own: replaced, nothing refused
    export_hf(ExportHFConfig(checkpoint=str(ckpt), out=str(hf_dir)))
    assert (hf_dir / "tokenizer.json").is_file()


def test_import_onto_its_source_or_a_foreign_directory_is_refused(hf_dir, tmp_path):
    before = snapshot(hf_dir)
    with pytest.raises(LmlabError, match="same as its input"):
        import_hf(ImportHFConfig(src=str(hf_dir), out=str(hf_dir)))
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "notes.txt").write_text("notes")
    with pytest.raises(LmlabError, match="notes.txt"):
        import_hf(ImportHFConfig(src=str(hf_dir), out=str(victim)))
    assert snapshot(hf_dir) == before and (victim / "notes.txt").read_text() == "notes"
    import_hf(ImportHFConfig(src=str(hf_dir), out=str(tmp_path / "new")))
    import_hf(ImportHFConfig(src=str(hf_dir), out=str(tmp_path / "new")))  # over its own output: fine
    load_checkpoint(tmp_path / "new")


def test_prepare_onto_a_checkpoint_is_refused(ckpt, tiny_data):
    from lmlab.data.shards import PrepareConfig, prepare

    before = snapshot(ckpt)
    src = json.loads((tiny_data / "meta.json").read_text())["source"]
    (ckpt.parent / "plain").mkdir()
    shutil.copyfile(ckpt / "config.json", ckpt.parent / "plain" / "config.json")
    with pytest.raises(LmlabError, match="prepare.*did not write.*config.json"):
        prepare(PrepareConfig(input=src, tokenizer=str(tiny_data / "tokenizer.json"), out=str(ckpt.parent / "plain")))
    with pytest.raises(LmlabError, match="meta.json is not prepare's own.*lmlab-checkpoint-1.*even with --force"):
        prepare(PrepareConfig(input=src, tokenizer=str(tiny_data / "tokenizer.json"), out=str(ckpt), force=True))
    assert snapshot(ckpt) == before


def test_forced_output_replaces_only_own_files_header_last(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    for name in ("a", "b", "head", "mine.txt"):
        (out / name).write_text("old")
    with output_dir(out, "verb", ("a", "b", "head"), force=True) as tmp:
        (tmp / "a").write_text("new")
        (tmp / "head").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["a", "head", "mine.txt"]
    assert (out / "a").read_text() == "new" and (out / "mine.txt").read_text() == "old"


# --- 2. recovery before resuming ---------------------------------------------------------------------

KILL_BETWEEN_RENAMES = """
import os, sys
from pathlib import Path
real = os.replace
def replace(src, dst):
    dst = Path(dst)
    if dst.name == "checkpoint" and (dst.parent / ".checkpoint.old").exists():
        os._exit(9)  # the old checkpoint is aside, the new one not yet in place
    return real(src, dst)
os.replace = replace
from lmlab.cli import main
sys.exit(main(sys.argv[1:]))
"""


def pretrain_argv(data: Path, out: Path, steps: int, ckpt_interval: int = 10) -> list[str]:
    sets = ["model.d_model=32", "model.n_layers=1", "model.n_heads=2", "model.max_seq_len=32", f"train.steps={steps}",
            "train.batch_size=4", "train.block_size=32", "train.eval_interval=0", "train.eval_batches=1",
            f"train.ckpt_interval={ckpt_interval}", "train.log_interval=5", "train.precision=fp32",
            "train.threads=1", "train.progress=false", "train.warmup_steps=2"]
    return ["pretrain", "--data", str(data), "--out", str(out), *[a for s in sets for a in ("--set", s)]]


def test_kill_between_the_swap_renames_resumes_from_the_saved_step(tiny_data, tmp_path):
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-c", KILL_BETWEEN_RENAMES, *pretrain_argv(tiny_data, out, 20)],
                       env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 9, r.stderr[-2000:]
    assert not (out / "checkpoint").exists() and (out / ".checkpoint.old").is_dir()
    logged = (out / "metrics.jsonl").read_text().splitlines()
    assert main(pretrain_argv(tiny_data, out, 20)) == 0
    summary = json.loads((out / "summary.json").read_text())["pretrain"]
    assert summary["resumed_from_step"] == 10 and summary["steps"] == 20
    rows = (out / "metrics.jsonl").read_text().splitlines()
    kept = [line for line in logged if json.loads(line)["step"] <= 10]
    assert rows[:len(kept)] == kept and json.loads(rows[-1])["step"] == 20
    assert not (out / ".checkpoint.old").exists()


# --- 3. one run per directory, and what dead runs left ---------------------------------------------------

def wait_for_lock(out: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    t = time.time()
    while time.time() - t < timeout:
        if (out / LOCK).is_file() and (out / LOCK).read_text().strip() == str(proc.pid):
            return
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        time.sleep(0.1)
    raise AssertionError("the first run never took the lock")


def test_second_run_on_a_locked_directory_fails_naming_the_holder(tiny_data, tmp_path):
    out = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-m", "lmlab.cli", *pretrain_argv(tiny_data, out, 100000, 0)],
                             env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_lock(out, first)
        second = subprocess.run([sys.executable, "-m", "lmlab.cli", *pretrain_argv(tiny_data, out, 20)],
                                env=ENV, capture_output=True, text=True, timeout=120)
        assert second.returncode == 2
        assert f"in use by another lmlab run (pid {first.pid})" in second.stderr
        assert "Traceback" not in second.stderr
    finally:
        first.kill()
        first.wait()
    # the kernel dropped the dead holder's lock: the next run goes ahead
    assert main(pretrain_argv(tiny_data, out, 10)) == 0


def test_stale_temporary_files_are_removed_when_a_run_starts(tiny_data, tmp_path):
    out = tmp_path / "run"
    assert main(pretrain_argv(tiny_data, out, 10)) == 0
    (out / ".checkpoint.a1b2c3d4.tmp").mkdir()
    (out / ".checkpoint.a1b2c3d4.tmp" / "model.safetensors").write_bytes(b"x" * 100)
    (out / ".loss.png.zz_9y8x7.tmp").write_bytes(b"png")
    shutil.copytree(out / "checkpoint", out / ".checkpoint.old")
    (out / "keep.tmp").write_text("a user's file with a similar name")
    assert main(pretrain_argv(tiny_data, out, 10)) == 0
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == [LOCK]
    assert (out / "keep.tmp").is_file()


def test_a_run_that_fails_at_once_leaves_no_directory(tmp_path):
    assert main(pretrain_argv(tmp_path / "no-data", tmp_path / "run", 5)) == 2
    assert not (tmp_path / "run").exists()


def test_lock_nests_in_one_process_and_cleaning_recovers_a_lone_old_copy(tmp_path):
    with run_lock(tmp_path), run_lock(tmp_path):
        assert (tmp_path / LOCK).read_text().strip() == str(os.getpid())
    (tmp_path / ".checkpoint.old").mkdir()
    assert clean_stale(tmp_path) == [] and (tmp_path / "checkpoint").is_dir()


# --- 5-8. paths read from files stay inside their directory -------------------------------------------

@pytest.fixture
def secret(tmp_path) -> Path:
    (tmp_path / "secret.txt").write_text("the secret")
    return tmp_path / "secret.txt"


def test_import_refuses_a_tokenizer_linking_outside_or_garbage(hf_dir, secret, tmp_path):
    (hf_dir / "tokenizer.json").unlink()
    (hf_dir / "tokenizer.json").symlink_to(secret)
    with pytest.raises(LmlabError, match="points outside"):
        import_hf(ImportHFConfig(src=str(hf_dir), out=str(tmp_path / "a")))
    (hf_dir / "tokenizer.json").unlink()
    (hf_dir / "tokenizer.json").write_text('{"garbage": true}')
    with pytest.raises(LmlabError, match="not a valid tokenizer.json"):
        import_hf(ImportHFConfig(src=str(hf_dir), out=str(tmp_path / "a")))
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize("where", ["copy", "file"])
def test_shard_header_naming_a_file_outside_is_refused(tiny_data, tmp_path, secret, where):
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    meta = json.loads((data / "meta.json").read_text())
    if where == "copy":
        meta["tokenizer"]["copy"] = "../secret.txt"
    else:
        meta["splits"]["train"]["file"] = str(secret)
    (data / "meta.json").write_text(json.dumps(meta))
    assert main(pretrain_argv(data, tmp_path / "run", 5)) == 2
    assert not (tmp_path / "run" / "checkpoint").exists()


@pytest.mark.parametrize("shard", ["/etc/passwd", "../../secret.txt", "sub/../../secret.txt"])
def test_weight_map_outside_the_model_directory_is_refused(hf_dir, shard):
    (hf_dir / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"wte.weight": shard}}))
    with pytest.raises(LmlabError, match="points outside"):
        import_hf(ImportHFConfig(src=str(hf_dir), out=str(hf_dir.parent / "o")))


@pytest.mark.parametrize("index", ["{not json", "[1, 2]", '{"metadata": {}}', '{"weight_map": []}'])
def test_malformed_shard_index_is_one_error(hf_dir, index):
    (hf_dir / "model.safetensors.index.json").write_text(index)
    with pytest.raises(LmlabError, match="index"):
        import_hf(ImportHFConfig(src=str(hf_dir), out=str(hf_dir.parent / "o")))


def test_huge_n_positions_is_refused_before_allocating(hf_dir, tmp_path):
    cfg = json.loads((hf_dir / "config.json").read_text())
    cfg["n_positions"] = 10**9
    (hf_dir / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(LmlabError, match="pos_emb.weight"):
        import_hf(ImportHFConfig(src=str(hf_dir), out=str(tmp_path / "o")))


def test_checkpoint_meta_must_list_its_files_and_only_checkpoint_files(ckpt, secret):
    meta = json.loads((ckpt / "meta.json").read_text())
    meta["files"][str(secret)] = {"bytes": 10, "sha256": "0" * 64}
    (ckpt / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(LmlabError, match="not a checkpoint file"):
        load_checkpoint(ckpt)
    del meta["files"]
    (ckpt / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(LmlabError, match="does not list"):
        load_checkpoint(ckpt)


def test_tampered_weights_with_files_list_removed_do_not_load(ckpt):
    from safetensors.torch import load_file, save_file

    w = load_file(str(ckpt / "model.safetensors"))
    w["tok_emb.weight"].zero_()
    save_file(w, str(ckpt / "model.safetensors"))
    meta = json.loads((ckpt / "meta.json").read_text())
    del meta["files"]
    (ckpt / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(LmlabError, match="cannot be verified"):
        load_checkpoint(ckpt)


def test_symlink_inside_a_checkpoint_is_refused(ckpt, secret):
    shutil.copyfile(secret, ckpt / "tokenizer.json.real")
    (ckpt / "tokenizer.json").unlink()
    (ckpt / "tokenizer.json").symlink_to(secret)
    (ckpt / "tokenizer.json.real").unlink()
    rehash(ckpt)
    with pytest.raises(LmlabError, match="symbolic link"):
        load_checkpoint(ckpt)


@pytest.mark.parametrize("meta, match", [
    ("[1, 2]", "not a JSON object"),
    ('{"files": {"model.safetensors": {"sha256": "x"}, "config.json": {}}}', "needs 'bytes' and 'sha256'"),
])
def test_malformed_meta_is_one_error(ckpt, meta, match):
    (ckpt / "meta.json").write_text(meta)
    with pytest.raises(LmlabError, match=match):
        load_checkpoint(ckpt)


@pytest.mark.parametrize("config, match", [
    (b"\xff\xfe not utf-8", "cannot read config.json"),
    (b"[1]", "must be a JSON object"),
    (b'{"max_seq_len": "long"}', "max_seq_len"),
])
def test_bad_config_json_is_one_error(ckpt, config, match):
    (ckpt / "config.json").write_bytes(config)
    rehash(ckpt)
    with pytest.raises(LmlabError, match=match):
        load_checkpoint(ckpt)


def test_huge_max_seq_len_in_a_checkpoint_is_refused_before_allocating(tmp_path):
    from lmlab.model.checkpoint import load_model, model_state, save_checkpoint
    from lmlab.model.config import ModelConfig
    from lmlab.model.transformer import Transformer

    small = ModelConfig(d_model=32, n_layers=1, n_heads=2, positions="rope", max_seq_len=32)
    save_checkpoint(tmp_path / "c", model_state(Transformer(small)), small)
    cfg = json.loads((tmp_path / "c" / "config.json").read_text())
    cfg["max_seq_len"] = 10**12
    (tmp_path / "c" / "config.json").write_text(json.dumps(cfg))
    rehash(tmp_path / "c")
    with pytest.raises(LmlabError, match="GB to build.*max_seq_len=1000000000000"):
        load_model(tmp_path / "c")


def test_checkpoint_files_have_the_usual_permissions(ckpt, tmp_path):
    from lmlab.model.checkpoint import load_model, model_state, save_checkpoint

    save_checkpoint(tmp_path / "c", model_state(load_model(ckpt)), load_checkpoint(ckpt).config)
    umask = os.umask(0)
    os.umask(umask)
    for p in (tmp_path / "c").iterdir():
        assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~umask, p.name


# --- 9. the native build directory is private ----------------------------------------------------------

def test_native_build_directory_is_private(tmp_path):
    from lmlab.cbuild import private_dir

    d = private_dir(tmp_path / "a" / "native")
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    os.chmod(d, 0o777)
    assert stat.S_IMODE(private_dir(d).stat().st_mode) == 0o700
    (tmp_path / "link").symlink_to(d)
    with pytest.raises(RuntimeError, match="not a directory of this user's"):
        private_dir(tmp_path / "link")
    if os.getuid() == 0:  # only root can hand a directory to another user
        other = tmp_path / "other"
        other.mkdir()
        os.chown(other, 65534, 65534)
        with pytest.raises(RuntimeError, match="not a directory of this user's"):
            private_dir(other)


def test_post_training_onto_its_own_init_is_refused_before_training(ckpt):
    from lmlab.post.sft import SFTConfig, sft

    before = snapshot(ckpt.parent)
    with pytest.raises(LmlabError, match="sft: the output .* is the same as its input"):
        sft(SFTConfig(init=str(ckpt), out=str(ckpt.parent)))
    assert snapshot(ckpt.parent) == before
