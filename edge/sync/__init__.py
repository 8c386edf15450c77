"""Cloud sync over MQTT: events up through a durable outbox; signed releases, deltas, commands down.

See docs/mqtt.md for the topic tree, payload schemas, QoS and retained flags.
"""
