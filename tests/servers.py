"""Real servers for the connector tests (``-m connectors``), each on a free loopback port.

Each fixture starts its server in a temporary directory, waits until it accepts
connections, yields its URL, and stops it (and checks it stopped). The Debian
packages redis-server, mosquitto and rabbitmq-server provide them (.ci/run installs
them); a test marked ``connectors`` fails, not skips, when its server is missing.
"""
