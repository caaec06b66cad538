"""Training of the networks: the shared loop (``loop``) and one trainer per family.

``loop`` trains the crop-trained fusion networks (refinefuse, dfh-base) and runs every epoch of
``text`` (tesg, textdfh) and ``mgfusion``; ``registration`` trains the registration network and
the tard fusion head, ``tard`` the tard detection head.
"""
