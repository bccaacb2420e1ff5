"""hierfedlora inside Flower (flwr 1.42, the Message API): a Flower App, its ServerApp helper, a
ClientApp factory, the engine's Flower executor and a ``Strategy`` for ``strategy.start(...)`` users.

Importing this package imports ``flwr`` (the ``hierfedlora[flower]`` extra); nothing else in
hierfedlora does. In Flower's words a device is a *node* (a SuperNode running the ClientApp).
"""

from hierfedlora.runtime.flower.executor import FlowerExecutor, discover_nodes
from hierfedlora.runtime.flower.node import NodeData, make_client_app, partition_node_data, settings_model_spec
from hierfedlora.runtime.flower.protocol import DeviceJob, NodeProfile
from hierfedlora.runtime.flower.server import FlowerRun, discovered_fleet, make_server_app, run_server
from hierfedlora.runtime.flower.settings import AppSettings

__all__ = [
    "AppSettings",
    "DeviceJob",
    "FlowerExecutor",
    "FlowerRun",
    "NodeData",
    "NodeProfile",
    "discover_nodes",
    "discovered_fleet",
    "make_client_app",
    "make_server_app",
    "partition_node_data",
    "run_server",
    "settings_model_spec",
]
