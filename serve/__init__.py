"""Ray Serve ensemble of candidate LLMs and the URG ranker-fuser (`serve.app:build_app`)."""
