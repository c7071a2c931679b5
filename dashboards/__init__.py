"""The Streamlit dashboard of `amoe dashboard`: the page (app.py, a Streamlit script) and the modules it reads runs,
sweeps and curation outputs with (loaders, sweep_loaders, curation_loaders) and draws with (charts)."""
