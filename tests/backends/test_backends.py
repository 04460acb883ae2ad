"""The backend interface (roma_runtime.backends.base.Backend) is complete in every backend, and opening a backend
never compiles a model: the build step (roma_runtime.builds) is the caller's, and a missing build is one clear
RomaError that names it."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

from roma_runtime import RomaError
from roma_runtime.backends import create_backend, needs_build
from roma_runtime.backends.base import Backend, Wrapper
from roma_runtime.backends.reference import RefBackend
from roma_runtime.builds import build_for, default_build_dir
from roma_runtime.engine import Engine
from roma_runtime.model.loader import load_model

MEMBERS = sorted(Backend.__annotations__)  # the data members every backend sets
METHODS = sorted(Backend.__abstractmethods__)


def backend_classes():
    pytest.importorskip("pynq")
    from roma_runtime.backends.board import BoardBackend
    from roma_runtime.backends.emulated import EmuBackend

    return [RefBackend, EmuBackend, BoardBackend]


def assert_complete(backend: Backend) -> None:
    missing = [m for m in MEMBERS if m not in dir(backend)]
    assert not missing, f"{type(backend).__name__} lacks {missing}"


def test_the_interface_lists_what_engine_bench_and_cli_use():
    assert set(METHODS) == {"new_cache", "forward", "check_lora", "set_lora", "last_cycles", "generate"}
    assert {"name", "config", "numerics", "kv_dtype", "max_context", "clock_mhz", "autonomous", "sampler_ring",
            "sampler_owner", "overlay", "lora_unit"} == set(MEMBERS)


def test_every_backend_class_implements_every_method():
    for cls in backend_classes():
        assert not inspect.isabstract(cls), cls
        for name in METHODS:
            assert getattr(cls, name) is not getattr(Backend, name), f"{cls.__name__}.{name} is not implemented"

    class Partial(Backend):  # a backend that forgets a method cannot be made
        def new_cache(self, capacity=None): ...

    with pytest.raises(TypeError, match="abstract"):
        Partial()


def test_ref_backend_states_what_it_lacks_and_a_wrapper_forwards_everything(tiny_models):
    model = load_model(tiny_models["q4_1"])
    ref = create_backend("ref", model, "quant")
    assert_complete(ref)
    assert ref.last_cycles() is None and ref.clock_mhz is None and ref.overlay is None
    assert not ref.autonomous and ref.sampler_ring == 0 and ref.max_context == model.config.context_length
    cache = ref.new_cache(8)
    with pytest.raises(RomaError, match="no autonomous decode"):
        ref.generate(1, 0, 2, cache=cache)
    wrapped = Wrapper(ref)
    assert_complete(wrapped)
    assert all(getattr(wrapped, m) is getattr(ref, m) for m in MEMBERS)
    logits = wrapped.forward([1, 2], cache)
    assert cache.length == 2 and np.array_equal(logits, ref.forward([1, 2], ref.new_cache(8)))


def test_emu_backend_sets_every_member(tiny_emu):
    assert_complete(tiny_emu)
    assert tiny_emu.autonomous and tiny_emu.sampler_ring > 0 and tiny_emu.clock_mhz > 0
    assert tiny_emu.overlay is not None and tiny_emu.max_context == tiny_emu.config.context_length
    tiny_emu.forward([1, 2, 3], tiny_emu.new_cache(8))
    assert tiny_emu.last_cycles()["gemv"] > 0


def test_opening_the_emu_backend_never_compiles_a_model(tiny_models):
    pytest.importorskip("pynq")
    model = load_model(tiny_models["f32"])  # no build of it is compiled in this session
    folder = default_build_dir(model)
    assert needs_build("emu", model) and not needs_build("ref", model) and not needs_build("board", model)
    for opening in (lambda: create_backend("emu", model), lambda: Engine(model, "emu", lora_slots=0)):
        with pytest.raises(RomaError, match="the emu backend runs a compiled build") as e:
            opening()
        assert "default_build" in e.value.hint and "roma compile" in e.value.hint
    assert not folder.exists()  # nothing was compiled on the way
    assert build_for("ref", model) is None  # the golden model runs the model as it is


def test_a_build_runs_as_it_is(tiny_models, tiny_build):
    build = load_model(tiny_build)
    assert not needs_build("emu", build) and build_for("emu", build, progress=False) is None
    model = load_model(tiny_models["q4_1"])
    assert build_for("emu", model, progress=False) == default_build_dir(model)  # the default build, found or made
