"""The baseline for the GetOperation throughput figure: a bare grpc.aio
Operations servicer that returns stored Operation messages from a dict.

    python -m bench.bare_server --operation-file OP.bin --port-file PORT

OP.bin holds one serialized google.longrunning.Operation (the one our server
returns); GetOperation for its name returns it, any other name NOT_FOUND.
Same grpc server options as ours (longrun_server.app.SERVER_OPTIONS)."""

from __future__ import annotations

import argparse
import asyncio
import signal
from pathlib import Path

import grpc
from google.longrunning import operations_pb2, operations_pb2_grpc

from longrun_server.app import SERVER_OPTIONS


class DictOperations(operations_pb2_grpc.OperationsServicer):
    def __init__(self, ops: dict[str, operations_pb2.Operation]) -> None:
        self.ops = ops

    async def GetOperation(
        self, request: operations_pb2.GetOperationRequest, context: grpc.aio.ServicerContext
    ) -> operations_pb2.Operation:
        op = self.ops.get(request.name)
        if op is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"{request.name} not found")
        return op


async def serve(operation_file: Path, port_file: Path) -> None:
    op = operations_pb2.Operation.FromString(operation_file.read_bytes())  # noqa: ASYNC240
    server = grpc.aio.server(options=SERVER_OPTIONS)
    operations_pb2_grpc.add_OperationsServicer_to_server(DictOperations({op.name: op}), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    port_file.write_text(str(port))  # noqa: ASYNC240
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--operation-file", type=Path, required=True)
    parser.add_argument("--port-file", type=Path, required=True)
    args = parser.parse_args()
    asyncio.run(serve(args.operation_file, args.port_file))


if __name__ == "__main__":
    main()
