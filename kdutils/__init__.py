"""kdutils: the reusable parts of the kd-studies lab (data, models, losses, training, runner).

Modules are small and imported explicitly (`from kdutils import losses`), so
importing the package itself stays cheap.
"""

__version__ = "0.1.0"
