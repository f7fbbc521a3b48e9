mode = "hang"
steps = 3
