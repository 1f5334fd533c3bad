"""The gateway side: session sources and keys, reset policies, the session store,
the scheduler, hooks, and the ``hermes`` command line."""
