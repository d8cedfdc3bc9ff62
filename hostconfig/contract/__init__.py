"""What the program, the renderer and the gateway agent agree on: the limits and rules (``rules``) and the one
collecting reader they all validate with (``reader``). Pure Python, standard library only: the agent's zipapp ships
this package as it is."""
