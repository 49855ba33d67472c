"""Applications: the ``lithowatch`` command line, operator commands, the demo, and the
supervisor and launcher that start an embedded broker, Redis and the services.

An application module may import every layer below it (``services``, ``toolkit``, ``shared``);
nothing below imports an application module.
"""
