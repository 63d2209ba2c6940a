"""The API's MLflow adapter when the tracking server is away: it answers at once
(``TrackingUnavailable``, a 503) instead of waiting out the MLflow client's retries, which
last minutes (a request hanging on a dead server)."""

from __future__ import annotations

import socket

import pytest

from workers.tracking.read import Tracking, TrackingUnavailable


def unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.timeout(60)  # without the /health check first, each call retries for ~4 min
def test_a_server_that_is_down_is_reported_without_waiting_for_retries() -> None:
    tracking = Tracking(
        tracking_uri=f"http://127.0.0.1:{unused_port()}", artifact_root=None,
        ui_url="http://127.0.0.1:5000",
    )  # fmt: skip
    with pytest.raises(TrackingUnavailable, match="not reachable"):
        tracking.curves("0" * 32)
    assert tracking.run_link("0" * 32) is None
    with pytest.raises(TrackingUnavailable):
        tracking.store_dataset(data=b"a,y\n1,0\n", filename="d.csv", tenant="t", name="d")
    with pytest.raises(TrackingUnavailable, match="not reachable"):
        tracking.artifacts("0" * 32)
    with pytest.raises(TrackingUnavailable, match="not reachable"):
        tracking.fetch_artifact("0" * 32, "plots/learning_curve.png", "/nonexistent")
