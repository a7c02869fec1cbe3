"""Emergency alerts from the authorities by CAP 1.2 (OASIS Common Alerting Protocol): parse and validate
(parse.py), check the authority's XML signature (signature.py), find the sites inside the alert's areas
(geometry.py), speak or fetch its audio (audio.py), poll feeds (feeds.py), and turn each alert into an address
(service.py)."""
