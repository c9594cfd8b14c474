"""Server logic with no knowledge of HTTP: the routers call these, and `worker_agent.py` shares a few of them."""
