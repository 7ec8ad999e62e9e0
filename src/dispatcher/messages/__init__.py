"""Pure parsing and encoding of the messages on the wire: tasks in, responses out.

Nothing in this package does I/O: it turns bytes into valid values (or a clear error) and values
back into bytes, so every rule of the message contract can be tested without a broker.
"""
