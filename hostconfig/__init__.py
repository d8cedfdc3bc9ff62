"""hybrid-vpn host configuration: stack outputs -> gateway files (plan, render, cloud-init), delivery, gateway agent.

Deliberately empty: ``hostconfig.agent`` is bundled into a zipapp without jinja2, so importing this package must not
pull in the renderer.
"""
