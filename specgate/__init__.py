"""The ``specgate`` command: it composes the gateway, the agent and the lab, and loads each
command's code only when that command runs."""
