"""Precision chosen by the hardware, and the TensorFlow process environment.

Every machine kind is stood in for by injected CPU flags and GPU capabilities, so these
run anywhere; none imports TensorFlow.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from fmnist import hardware, runtime
from fmnist.errors import ConfigError

AVX2 = frozenset({"fpu", "sse4_2", "avx", "avx2", "fma"})  # Zen 3 EPYC: no AVX-512
AVX512_BF16 = AVX2 | {"avx512f", "avx512_vnni", "avx512_bf16"}  # Zen 4 EPYC
AMX = AVX2 | {"avx512f", "amx_tile", "amx_bf16"}  # Sapphire Rapids
AVX512_ONLY = AVX2 | {"avx512f", "avx512_vnni"}  # Ice Lake: AVX-512, no BF16


def choose(requested="auto", flags=AVX2, gpu=None, x86=True):
    return hardware.choose_precision(requested, flags_reader=lambda: flags,
                                     capability_reader=lambda: gpu, x86=x86)


@pytest.mark.parametrize("flags, expected", [(AVX2, "float32"), (AVX512_ONLY, "float32"),
                                             (AVX512_BF16, "bfloat16"), (AMX, "bfloat16")])
def test_auto_picks_bfloat16_only_on_cpus_that_compute_it_natively(flags, expected):
    choice = choose(flags=flags)
    assert choice.precision == expected and choice.requested == "auto"
    assert choice.native_bfloat16 == (expected == "bfloat16")
    assert choice.warning is None  # auto never picks the slow path
    found = [flag for flag in ("avx512_bf16", "amx_bf16") if flag in flags]
    if found:
        assert found[0] in choice.reason
    else:
        assert "no native bfloat16" in choice.reason


@pytest.mark.parametrize("capability, expected", [((8, 0), "bfloat16"), ((9, 0), "bfloat16"),
                                                  ((7, 5), "float32"), ((6, 1), "float32")])
def test_auto_on_a_gpu_follows_its_compute_capability_not_the_cpu(capability, expected):
    # A Turing GPU in an AVX-512 BF16 host still trains in float32: the GPU does the work.
    choice = choose(flags=AVX512_BF16, gpu=capability)
    assert choice.precision == expected
    assert ".".join(map(str, capability)) in choice.reason


def test_auto_is_float32_on_cpus_other_than_x86():
    # ARM's /proc/cpuinfo has no "flags" line; even a flag named like x86's proves nothing.
    assert choose(flags=frozenset({"avx512_bf16"}), x86=False).precision == "float32"


def test_explicit_bfloat16_on_emulating_hardware_is_kept_with_a_warning():
    choice = choose("bfloat16", flags=AVX2)
    assert choice.precision == "bfloat16"
    assert "many times slower" in choice.warning and "\n" not in choice.warning
    assert choose("bfloat16", flags=AVX512_BF16).warning is None
    assert choose("bfloat16", flags=AVX2, gpu=(8, 6)).warning is None


def test_explicit_float32_is_float32_everywhere():
    for flags in (AVX2, AVX512_BF16, AMX):
        assert choose("float32", flags=flags).precision == "float32"


def test_an_unknown_precision_is_a_config_error():
    with pytest.raises(ConfigError, match="auto, float32, bfloat16"):
        choose("float16")


def test_the_default_readers_are_looked_up_when_called(monkeypatch):
    monkeypatch.setattr(hardware, "read_cpu_flags", lambda: AVX512_BF16)
    monkeypatch.setattr(hardware, "gpu_compute_capability", lambda: None)
    monkeypatch.setattr(hardware, "is_x86", lambda: True)
    assert hardware.choose_precision("auto").precision == "bfloat16"
    monkeypatch.setattr(hardware, "read_cpu_flags", lambda: AVX2)
    assert hardware.choose_precision("auto").precision == "float32"


def test_cpu_flags_come_from_the_flags_line_of_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: AMD EPYC 7B13\n"
                       "flags\t\t: fpu AVX2 fma avx512_bf16\nbugs\t\t: sysret_ss_attrs\n")
    assert hardware.read_cpu_flags(cpuinfo) == frozenset({"fpu", "avx2", "fma", "avx512_bf16"})
    assert hardware.cpu_model(cpuinfo) == "AMD EPYC 7B13"
    assert hardware.read_cpu_flags(tmp_path / "absent") == frozenset()
    (tmp_path / "arm").write_text("processor\t: 0\nFeatures\t: fp asimd bf16\n")
    assert hardware.read_cpu_flags(tmp_path / "arm") == frozenset()


@pytest.mark.parametrize("flags, kind", [(AVX2, "avx2"), (AVX512_ONLY, "avx512"),
                                         (AVX512_BF16, "avx512-bf16"), (AMX, "amx-bf16"),
                                         (frozenset({"sse2"}), "other")])
def test_cpu_kind(flags, kind):
    assert hardware.cpu_kind(flags) == kind


def test_dtype_policy_of_each_precision():
    assert hardware.dtype_policy("float32") == "float32"
    assert hardware.dtype_policy("bfloat16") == "mixed_bfloat16"


def test_onednn_is_turned_on_for_x86_unless_the_user_said_otherwise():
    environ = {}
    runtime.configure_tensorflow_environment(environ, x86=True)
    assert environ == {"TF_ENABLE_ONEDNN_OPTS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    mine = {"TF_ENABLE_ONEDNN_OPTS": "0", "TF_CPP_MIN_LOG_LEVEL": "0"}
    runtime.configure_tensorflow_environment(mine, x86=True)
    assert mine == {"TF_ENABLE_ONEDNN_OPTS": "0", "TF_CPP_MIN_LOG_LEVEL": "0"}
    arm = {}
    runtime.configure_tensorflow_environment(arm, x86=False)
    assert "TF_ENABLE_ONEDNN_OPTS" not in arm


def test_filtered_stderr_drops_the_import_notices_and_keeps_everything_else(capfd):
    with runtime.filtered_stderr(runtime.is_import_notice):
        os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are "
                    b"written to STDERR\n")
        os.write(2, b"I0000 00:00:1 123 port.cc:153] oneDNN custom operations are on. You may\n")
        os.write(2, b"E0000 something real went wrong\n")
        print("a Python warning", file=sys.stderr)
    err = capfd.readouterr().err
    assert "E0000 something real went wrong" in err and "a Python warning" in err
    assert "InitializeLog" not in err and "oneDNN" not in err


@pytest.mark.slow  # a subprocess that imports TensorFlow
def test_importing_tensorflow_through_the_cli_prints_no_notices():
    # A fresh interpreter, as `fmnist train` starts: the first TensorFlow import is quiet.
    code = ("import fmnist.cli, fmnist.runtime; fmnist.runtime.prepare_tensorflow(); "
            "fmnist.runtime.quiet_tensorflow_import(); "
            "import tensorflow as tf; print(tf.constant(2) * 3)")
    env = {key: value for key, value in os.environ.items()
           if key not in ("TF_CPP_MIN_LOG_LEVEL", "TF_ENABLE_ONEDNN_OPTS")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "tf.Tensor(6" in done.stdout
    assert done.stderr.strip() == "", done.stderr


class _FakeJaxDevice:
    def __init__(self, platform, capability=None, kind=""):
        self.platform, self.compute_capability, self.device_kind = platform, capability, kind


def test_the_gpu_is_asked_of_the_keras_backend_that_will_run(monkeypatch):
    """Under KERAS_BACKEND=jax or torch there may be no TensorFlow at all: the GPU's
    capability (and so what `auto` picks) and its name come from that framework."""
    import types

    from fmnist.bench import measure

    jax = types.SimpleNamespace(devices=lambda: [_FakeJaxDevice("gpu", "9.0", "NVIDIA H100")])
    monkeypatch.setitem(sys.modules, "jax", jax)
    monkeypatch.setenv("KERAS_BACKEND", "jax")
    assert hardware.gpu_compute_capability() == (9, 0)
    assert measure.device_name() == "GPU: NVIDIA H100"
    choice = hardware.choose_precision("auto", flags_reader=lambda: AVX2, x86=True)
    assert choice.precision == "bfloat16" and "compute capability 9.0" in choice.reason
    jax.devices = lambda: [_FakeJaxDevice("cpu")]
    assert hardware.gpu_compute_capability() is None and measure.device_name() == "CPU"

    cuda = types.SimpleNamespace(is_available=lambda: True, get_device_capability=lambda i: (7, 5),
                                 get_device_name=lambda i: "Tesla T4")
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(cuda=cuda))
    monkeypatch.setenv("KERAS_BACKEND", "torch")
    assert hardware.gpu_compute_capability() == (7, 5)
    assert measure.device_name() == "GPU: Tesla T4"
    assert hardware.choose_precision("auto", x86=True).precision == "float32"  # below 8.0


def test_gpu_memory_is_taken_as_needed_unless_the_user_said_otherwise():
    environ = {}
    runtime.share_the_gpu(environ)
    assert environ == {"TF_FORCE_GPU_ALLOW_GROWTH": "true", "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
    mine = {"XLA_PYTHON_CLIENT_PREALLOCATE": "true"}
    runtime.share_the_gpu(mine)
    assert mine["XLA_PYTHON_CLIENT_PREALLOCATE"] == "true"
