"""Building models: the default head from MakeHuman data, landmark pinning, BFM conversion,
and the small painter's renderer their previews use."""
