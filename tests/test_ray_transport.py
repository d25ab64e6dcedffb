"""Flower's arrays cross Ray out of band (`federation/ray_transport.py`) and come back identical."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from fedspeech.federation.parameters import array_view
from fedspeech.federation.ray_transport import array_from_payload, array_payload, send_arrays_out_of_band


def record(seed: int = 0) -> RecordDict:
    rng = np.random.default_rng(seed)
    arrays = {f"layer{i}.weight": Array(rng.standard_normal((500, 500)).astype(np.float32)) for i in range(4)}
    arrays["empty"] = Array(np.zeros((0, 3), np.float32))
    return RecordDict({"arrays": ArrayRecord(arrays), "config": ConfigRecord({"lr": 0.1})})


def same(a: RecordDict, b: RecordDict) -> bool:
    """Same fields and bytes, and the received data reads as the same tensor."""
    x, y = a["arrays"], b["arrays"]
    return list(x) == list(y) and all(
        (x[k].dtype, tuple(x[k].shape), x[k].stype, x[k].data)
        == (y[k].dtype, tuple(y[k].shape), y[k].stype, bytes(y[k].data))
        and np.array_equal(array_view(x[k]), array_view(y[k]))
        for k in x) and dict(b["config"]) == {"lr": 0.1}


def test_payload_round_trip_keeps_every_field():
    for array in record()["arrays"].values():
        back = array_from_payload(array_payload(array))
        assert (back.dtype, tuple(back.shape), back.stype, back.data) == \
            (array.dtype, tuple(array.shape), array.stype, array.data)


def test_without_a_running_ray_nothing_is_registered():
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        pytest.skip("Ray is running in this process")
    assert send_arrays_out_of_band() is False


def test_a_ray_still_being_imported_by_another_thread_is_left_alone(monkeypatch):
    # Flower's simulation engine imports Ray in its own thread while the server already streams
    # the identity query: a partially initialised module must not raise
    monkeypatch.setitem(sys.modules, "ray", types.ModuleType("ray"))
    assert send_arrays_out_of_band() is False


@pytest.mark.slow
def test_arrays_cross_ray_out_of_band_and_come_back_identical():
    import ray

    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        assert send_arrays_out_of_band()
        sent = record()
        # Ray's own pickler: the 4 MB of tensors go to out-of-band buffers, not into the stream
        buffers: list = []
        inband = ray.cloudpickle.dumps(sent, protocol=5, buffer_callback=buffers.append)
        assert len(inband) < 64_000
        assert sum(b.raw().nbytes for b in buffers) >= 4 * 500 * 500 * 4
        received = ray.cloudpickle.loads(inband, buffers=buffers)
        assert same(sent, received)
        # and nothing was copied back: each tensor is read where the buffer lies, read-only
        data = received["arrays"]["layer0.weight"].data
        assert isinstance(data, memoryview) and data.readonly
        assert any(np.shares_memory(np.frombuffer(data, np.uint8), np.frombuffer(b, np.uint8))
                   for b in buffers)

        @ray.remote
        def echo(rec: RecordDict) -> RecordDict:        # a worker: registers, replies
            send_arrays_out_of_band()
            return rec

        assert same(sent, ray.get(ray.put(sent)))
        assert same(sent, ray.get(echo.remote(sent)))
    finally:
        ray.shutdown()
