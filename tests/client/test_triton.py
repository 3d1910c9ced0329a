"""The Triton connection: what it reads from the served config, and a request whose
connection drops before the answer is sent again."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient
from geventhttpclient.response import HTTPConnectionClosed
from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2 as pb

from client.triton import PROTOCOLS, Triton, model_info
from harness.http_server import reply_json
from model_repository.config import Flavour, config_pbtxt


class _ServedConfig:
    """What Triton answers for a config.pbtxt, in the JSON form tritonclient hands over."""

    def __init__(self, pbtxt: str) -> None:
        message = text_format.Parse(pbtxt, pb.ModelConfig())
        self.config = json_format.MessageToDict(message, preserving_proto_field_name=True)

    def model_config(self, model_name: str) -> dict[str, Any]:
        return self.config


@pytest.mark.parametrize(("flavour", "preferred"), [("python", 8), ("onnxruntime", 32)])
def test_requests_are_the_batch_the_server_prefers(flavour: Flavour, preferred: int) -> None:
    """A CPU server runs batches of 8 best; a GPU one takes its whole max_batch_size."""
    served = _ServedConfig(
        config_pbtxt(flavour, model_name="m", image_size=8, num_classes=2, max_batch_size=32)
    )
    info = model_info(served, "m")  # type: ignore[arg-type]
    assert (info.preferred_batch_size, info.max_batch_size) == (preferred, 32)


def test_a_model_without_a_batcher_is_sent_its_max_batch() -> None:
    served = _ServedConfig(
        config_pbtxt("python", model_name="m", image_size=8, num_classes=2, max_batch_size=16)
    )
    del served.config["dynamic_batching"]
    assert model_info(served, "m").preferred_batch_size == 16  # type: ignore[arg-type]


@pytest.mark.integration
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_the_served_config_reads_the_same_over_both_protocols(served_model: dict, protocol: str) -> None:
    url = served_model["url"] if protocol == "http" else served_model["grpc_url"]
    triton = Triton(url, protocol)  # type: ignore[arg-type]
    try:
        info = model_info(triton)
    finally:
        triton.close()
    assert (info.image_size, info.num_classes, info.max_batch_size, info.preferred_batch_size) == (
        32,
        2,
        16,
        8,
    )


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
