"""What runs and pipelines look like to people: graph pictures, JUnit XML, the executed notebook,
terminal progress. Reports read the model and events; engines never import them."""
