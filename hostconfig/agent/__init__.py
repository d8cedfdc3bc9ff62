"""The gateway agent (`vpnctl`): reconciler, strongSwan updown hook, failover daemon, status and metrics.

Runs on the gateway with system Python 3.11+ and two pure-Python dependencies (pyroute2, vici), delivered as one
zipapp built by ``hostconfig.agent.bundle``.
"""
