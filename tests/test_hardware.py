"""The MFU denominator: a matmul peak measured once per machine and key, cached, and shown by `lmlab doctor`."""

from __future__ import annotations

import json

import pytest
import torch

from lmlab.train import hardware

CPU = torch.device("cpu")


@pytest.fixture()
def fake_measure(tmp_path, monkeypatch):
    """A private cache, and a 'measurement' that returns a new value each call (as real ones do)."""
    monkeypatch.setenv("LMLAB_CACHE", str(tmp_path))
    calls = []

    def measure(dtype, device, n, seconds, repeats=1):
        calls.append((dtype, n, repeats))
        return 1e11 * len(calls)

    monkeypatch.setattr(hardware, "measure_matmul_peak", measure)
    return calls


def test_the_peak_is_measured_once_then_read_from_the_cache(fake_measure):
    first = hardware.matmul_peak(torch.float32, CPU)
    assert hardware.matmul_peak(torch.float32, CPU) == first == 1e11
    assert len(fake_measure) == 1 and fake_measure[0][2] == hardware.PEAK_REPEATS  # best of several rounds
    stored = json.loads(hardware.peak_cache_file().read_text())
    assert stored[hardware.peak_key(torch.float32, CPU, 1024)]["flops"] == first
    assert str(hardware.peak_cache_file()).endswith(f"native/peaks-{hardware.cbuild.cpu_key()}.json")


def test_the_key_holds_dtype_size_threads_and_torch_version(fake_measure, monkeypatch):
    key = hardware.peak_key(torch.float32, CPU, 1024)
    assert f"threads={torch.get_num_threads()}" in key and torch.__version__ in key and "float32" in key
    hardware.cached_peak(torch.float32, CPU)
    hardware.cached_peak(torch.float32, CPU, n=512)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(threads + 1)
        hardware.cached_peak(torch.float32, CPU)
    finally:
        torch.set_num_threads(threads)
    assert len(fake_measure) == 3 and len(json.loads(hardware.peak_cache_file().read_text())) == 3


def test_remeasure_replaces_the_cached_peak(fake_measure):
    assert hardware.cached_peak(torch.float32, CPU)["flops"] == 1e11
    assert hardware.cached_peak(torch.float32, CPU, remeasure=True)["flops"] == 2e11
    assert hardware.cached_peak(torch.float32, CPU)["flops"] == 2e11


def test_a_corrupt_or_unwritable_cache_still_gives_a_peak(fake_measure, tmp_path, monkeypatch):
    hardware.peak_cache_file().parent.mkdir(parents=True)
    hardware.peak_cache_file().write_text("{not json")
    assert hardware.matmul_peak(torch.float32, CPU) == 1e11
    monkeypatch.setattr(hardware, "write_json", lambda *a, **k: (_ for _ in ()).throw(PermissionError("ro")))
    assert hardware.cached_peak(torch.float32, CPU, n=256)["flops"] == 2e11


def test_best_of_repeats_is_a_real_measurement():
    one = hardware.measure_matmul_peak(torch.float32, CPU, n=128, seconds=0.01, repeats=3)
    assert one > 1e8  # any CPU multiplies 128 x 128 matrices faster than 0.1 GFLOP/s


def test_doctor_shows_the_cached_peak(fake_measure):
    from lmlab.doctor import DoctorConfig, doctor

    peak = hardware.cached_peak(torch.float32, CPU)
    out = doctor(DoctorConfig(measure=False))
    assert out["peaks_gflops"]["fp32"] == round(peak["flops"] / 1e9, 1)
    assert out["peaks_cache"]["file"] == str(hardware.peak_cache_file())
    assert out["peaks_cache"]["fp32"]["key"] == peak["key"]
    again = doctor(DoctorConfig(measure=False, remeasure_peaks=True))
    assert again["peaks_gflops"]["fp32"] != out["peaks_gflops"]["fp32"]


def test_measuring_the_peak_leaves_the_global_random_stream_alone():
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    hardware.measure_matmul_peak(torch.float32, CPU, n=64, seconds=0.01)
    assert torch.equal(torch.rand(3), expected)
