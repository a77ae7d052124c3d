DROP TABLE transaction_embeddings;
DELETE FROM trellis_vector_tables WHERE table_name = 'transaction_embeddings';
