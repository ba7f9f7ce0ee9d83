"""The async shell around the scheduler core: invocations, delivery, outcomes, lifecycle events, stats.

The runtime carries out the core's decisions against real nodes, runs each
invocation's attempts, delivers asynchronous events (one retry / max-age /
dead-letter loop for spawned calls, topics, streams, batch tasks and timers),
and records what happened. It imports the core, the node contract, the node
providers and the base records below it; never the sources, the gateway, the
platform facade or the app above it.
"""
