"""The pod agent: stdlib-only code that runs on the pod with its own python3 (3.9+).

Shipped to the pod as one zipapp file named by its content hash (see helpers/agent.py).
Only relative imports inside this package, and nothing outside the standard library.
"""
