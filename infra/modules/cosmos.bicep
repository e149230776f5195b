// Cosmos DB for NoSQL, serverless, Entra ID only: the database and every container the adapters in
// gateway_core/storage/cosmos.py use. The identity has data-plane roles only and cannot create containers,
// so they all exist here (tests/infra/test_drift.py checks names, partition keys and the vector path).
param accountName string
param location string
param identityPrincipalId string
param databaseName string
@description('Dimensions of the semantic cache embeddings: 1536 for text-embedding-3-small and ada-002.')
@minValue(1)
@maxValue(4096)
param embeddingDimensions int = 1536
@description('Vector index of the cache container: flat takes at most 505 dimensions.')
@allowed([
  'flat'
  'quantizedFlat'
  'diskANN'
])
param vectorIndexType string = 'quantizedFlat'
param tags object = {}

// Built-in Data Contributor: read and write items, read metadata; not create containers.
var dataContributor = '00000000-0000-0000-0000-000000000002'
var partitionKeyPath = '/pk'
var vectorPath = '/vector'
var defaultIndexing = {
  indexingMode: 'consistent'
  automatic: true
  includedPaths: [
    {
      path: '/*'
    }
  ]
  excludedPaths: [
    {
      path: '/"_etag"/?'
    }
  ]
}

resource account 'Microsoft.DocumentDB/databaseAccounts@2024-11-15' = {
  name: accountName
  location: location
  tags: tags
  kind: 'GlobalDocumentDB'
  properties: {
    databaseAccountOfferType: 'Standard'
    locations: [
      {
        locationName: location
        failoverPriority: 0
        isZoneRedundant: false
      }
    ]
    consistencyPolicy: {
      defaultConsistencyLevel: 'Session'
    }
    capabilities: [
      {
        name: 'EnableServerless'
      }
      {
        name: 'EnableNoSQLVectorSearch'
      }
    ]
    disableLocalAuth: true
    disableKeyBasedMetadataWriteAccess: true
    minimalTlsVersion: 'Tls12'
    publicNetworkAccess: 'Enabled'
  }
}

resource database 'Microsoft.DocumentDB/databaseAccounts/sqlDatabases@2024-11-15' = {
  parent: account
  name: databaseName
  properties: {
    resource: {
      id: databaseName
    }
  }
}

// defaultTtl -1: TTL on, no default; counters and cache entries set their own `ttl`, health documents none.
resource counters 'Microsoft.DocumentDB/databaseAccounts/sqlDatabases/containers@2024-11-15' = {
  parent: database
  name: 'counters'
  properties: {
    resource: {
      id: 'counters'
      partitionKey: {
        paths: [
          partitionKeyPath
        ]
        kind: 'Hash'
      }
      defaultTtl: -1
      indexingPolicy: defaultIndexing
    }
  }
}

resource health 'Microsoft.DocumentDB/databaseAccounts/sqlDatabases/containers@2024-11-15' = {
  parent: database
  name: 'health'
  properties: {
    resource: {
      id: 'health'
      partitionKey: {
        paths: [
          partitionKeyPath
        ]
        kind: 'Hash'
      }
      defaultTtl: -1
      indexingPolicy: defaultIndexing
    }
  }
}

// The semantic cache: `VectorDistance` over each entry's embedding. A vector policy cannot be changed on an
// existing container: a new dimension count means a new container (delete `cache`, deploy again).
resource cache 'Microsoft.DocumentDB/databaseAccounts/sqlDatabases/containers@2024-11-15' = {
  parent: database
  name: 'cache'
  properties: {
    resource: {
      id: 'cache'
      partitionKey: {
        paths: [
          partitionKeyPath
        ]
        kind: 'Hash'
      }
      defaultTtl: -1
      vectorEmbeddingPolicy: {
        vectorEmbeddings: [
          {
            path: vectorPath
            dataType: 'float32'
            dimensions: embeddingDimensions
            distanceFunction: 'cosine'
          }
        ]
      }
      indexingPolicy: {
        indexingMode: 'consistent'
        automatic: true
        includedPaths: [
          {
            path: '/*'
          }
        ]
        // The vector (indexed by vectorIndexes instead) and the cached body (never queried) cost RUs on
        // every write if indexed as ordinary paths.
        excludedPaths: [
          {
            path: '${vectorPath}/*'
          }
          {
            path: '/body/?'
          }
          {
            path: '/"_etag"/?'
          }
        ]
        vectorIndexes: [
          {
            path: vectorPath
            type: vectorIndexType
          }
        ]
      }
    }
  }
}

resource dataRole 'Microsoft.DocumentDB/databaseAccounts/sqlRoleAssignments@2024-11-15' = {
  parent: account
  name: guid(account.id, identityPrincipalId, dataContributor)
  properties: {
    roleDefinitionId: '${account.id}/sqlRoleDefinitions/${dataContributor}'
    principalId: identityPrincipalId
    scope: account.id
  }
}

output endpoint string = account.properties.documentEndpoint
output name string = account.name
output databaseName string = database.name
