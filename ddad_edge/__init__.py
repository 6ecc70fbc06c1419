"""ddad-edge: train DDAD chest X-ray anomaly detectors and deploy them to the edge.

Kept light on purpose: importing ``ddad_edge`` (or ``ddad_edge.runtime``) never imports torch.
"""

__version__ = "0.1.0"
