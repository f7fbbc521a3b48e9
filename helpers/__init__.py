"""workflow.sh: experiments on GPU pods from one config file."""

__version__ = "0.1.0"
