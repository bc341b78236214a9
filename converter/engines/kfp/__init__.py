"""The KFP engine: submits the compiled pipeline to a KFP cluster and turns its run into events."""
