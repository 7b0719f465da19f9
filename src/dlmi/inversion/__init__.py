"""Layer 3: running an inversion. The anytime runner shared by every method, its result, the
one builder of method configs and their documentation, provenance. Imports model/ and methods/
(layer 2), never evaluation/ or cli/."""
