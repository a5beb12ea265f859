"""The top layer: the ``mmtrain`` command (``cli``), its commands (``commands``), the Python API
(``api``), opt-in performance settings (``perf``) and the HTML report (``report``)."""
