"""What training and the benchmark both read: the synthetic edit families and their splits by
photo and by paraphrase, real footage, and the filler words of the wording variants."""
