"""MQTT: settings and topics (`settings`), the daemon's client (`client`), command decoding
(`commands`), paho callbacks that never raise (`guard`) and the daemon's MQTT output (`sink`).
Topics and payloads: docs/mqtt.md."""

from monitor.outputs.mqtt.client import MqttClient, publish_test_alert
from monitor.outputs.mqtt.commands import command_args, mute_until
from monitor.outputs.mqtt.settings import (
    COMMAND_VERBS,
    MqttError,
    MqttSettings,
    Topics,
    paho_client,
)
from monitor.outputs.sink import Command, CommandReceiver

__all__ = [
    "COMMAND_VERBS",
    "Command",
    "CommandReceiver",
    "MqttClient",
    "MqttError",
    "MqttSettings",
    "Topics",
    "command_args",
    "mute_until",
    "paho_client",
    "publish_test_alert",
]
