"""The Triton connection: a request whose connection drops before the answer is sent again."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import tritonclient.http as httpclient
from geventhttpclient.response import HTTPConnectionClosed

from client.triton import Triton
from harness.http_server import reply_json


class _PodThatExitsMidRequest(BaseHTTPRequestHandler):
    """Over HTTP/1.1 keep-alive: the first infer is read and then its connection closed with
    no answer (a pod's Triton exiting under an in-flight request); later ones are answered."""

    protocol_version = "HTTP/1.1"
    requests = 0

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        type(self).requests += 1
        if type(self).requests == 1:
            self.close_connection = True
            return
        output = {"name": "y", "datatype": "INT32", "shape": [1], "data": [7]}
        reply_json(self, 200, {"model_name": "m", "outputs": [output]})

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def pod_url() -> Iterator[str]:
    _PodThatExitsMidRequest.requests = 0
    server = ThreadingHTTPServer(("127.0.0.1", 0), _PodThatExitsMidRequest)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def _inputs() -> tuple[list[httpclient.InferInput], httpclient.InferRequestedOutput]:
    model_input = httpclient.InferInput("x", [1], "INT32")
    model_input.set_data_from_numpy(np.array([1], dtype=np.int32), binary_data=False)
    return [model_input], httpclient.InferRequestedOutput("y", binary_data=False)


def test_a_request_whose_connection_drops_is_sent_again_on_a_new_one(pod_url: str) -> None:
    triton = Triton(pod_url, "http", timeout_s=5)
    try:
        inputs, output = _inputs()
        assert int(triton.infer("m", inputs, output).as_numpy("y")[0]) == 7
    finally:
        triton.close()
    assert _PodThatExitsMidRequest.requests == 2


def test_tritonclient_alone_does_not_send_it_again(pod_url: str) -> None:
    """What the resend is for: an HTTP client resends only idempotent methods, and infer is a POST."""
    client = httpclient.InferenceServerClient(pod_url, connection_timeout=5, network_timeout=5)
    inputs, output = _inputs()
    try:
        with pytest.raises((ConnectionError, HTTPConnectionClosed)):
            client.infer("m", inputs, outputs=[output])
    finally:
        client.close()
    assert _PodThatExitsMidRequest.requests == 1
