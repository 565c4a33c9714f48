"""``glassformer serve``: the live explorer, and the inline notebook views.

* :mod:`.app` — the ASGI app (Starlette): the page, its assets, the JSON API under ``/api``, the safety checks;
* :mod:`.handlers` — what each endpoint computes, through the library (the one module that calls it);
* :mod:`.server` — open the models named at start and run the app with uvicorn;
* :mod:`.notebook` — ``glassformer.load(dir).show("text")``: the same views inline, no server;
* ``static/`` — the page (``index.html``, ``app.js``, ``app.css``), served from the package: no CDN.
"""
