"""The gRPC server role (installed as ``recsvc.serving``): reads published artifacts,
never writes them. Its command is ``recsvc serve`` (:mod:`.commands`).
"""
