"""Generated gRPC and protobuf code for the ``recsvc.v1`` wire contract.

The ``*_pb2.py``, ``*_pb2.pyi`` and ``*_pb2_grpc.py`` modules here are generated from
``proto/recsvc/v1/*.proto`` by ``make proto`` (``python -m recsvc.protogen``) and are
never hand-edited: change the ``.proto`` file and regenerate. ``tests/test_proto.py``
fails when the committed modules differ from what the ``.proto`` file generates.
"""
